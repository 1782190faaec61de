"""Model inputs for training: pixels from files, or cached features of frozen blocks.

When the lower blocks stay frozen for a whole run, their output for an image never
changes, so it is computed once and stored on disk, keyed by the image bytes, the
frozen weights, the preprocessing spec, the cut point and the augmentation view.
Later epochs (and later runs) then train only the upper blocks.

Deeper cuts are derived from a shallower *base* cut when one is given: the features
after ``Mixed_7a`` are computed from the cached features after ``Mixed_5d`` instead
of from pixels, so tuning trials that unfreeze different blocks share one base cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import Dataset
from tqdm import tqdm

from handler.preprocess import PreprocessSpec, image_to_tensor, load_image_file
from train.data import Sample
from train.model import BLOCKS, WatermarkNet

log = logging.getLogger(__name__)

VIEWS = ("orig", "hflip", "photo")
AUGMENT_LEVELS = {0: ("orig",), 1: ("orig", "hflip"), 2: ("orig", "hflip", "photo")}


def views_for(augment: int) -> tuple[str, ...]:
    """Training views of an augmentation strength: 0 none, 1 + mirror, 2 + photometric."""
    if int(augment) not in AUGMENT_LEVELS:
        raise ValueError(f"--augment {augment!r}: allowed are {', '.join(map(str, AUGMENT_LEVELS))} (or false/true)")
    return AUGMENT_LEVELS[int(augment)]


def apply_view(image: Image.Image, view: str) -> Image.Image:
    """One deterministic augmentation view of an image.

    ``photo`` is a mirrored copy with other exposure, contrast and colour, saved again
    as a JPEG of quality 70: what a re-shot, re-encoded seller photo looks like. None
    of the views crops, so a watermark stays in every view of a positive.
    """
    if view == "orig":
        return image
    if view == "hflip":
        return ImageOps.mirror(image)
    if view == "photo":
        out = ImageOps.mirror(image)
        out = ImageEnhance.Brightness(out).enhance(0.85)
        out = ImageEnhance.Contrast(out).enhance(1.2)
        out = ImageEnhance.Color(out).enhance(0.75)
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=70)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    raise ValueError(f"view {view!r}: allowed are {', '.join(VIEWS)}")


def pixel_tensor(sample: Sample, view: str, spec: PreprocessSpec) -> torch.Tensor:
    """The normalised model input for one file and view (serving preprocessing)."""
    image = load_image_file(sample.path, max_pixels=spec.max_pixels, draft_size=spec.draft_size)
    return image_to_tensor(apply_view(image, view), spec)


class PixelDataset(Dataset):
    """(input, label, group) from image files, preprocessed as the handler does."""

    def __init__(self, items: Sequence[tuple[Sample, str]], spec: PreprocessSpec) -> None:
        self.items = list(items)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        sample, view = self.items[index]
        return pixel_tensor(sample, view, self.spec), float(sample.label)


class TensorDataset(Dataset):
    """(input, label) from precomputed feature tensors."""

    def __init__(self, features: list[torch.Tensor], labels: list[float]) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        return self.features[index], self.labels[index]


def frozen_fingerprint(model: WatermarkNet, stop: int) -> str:
    """Hash of the weights and buffers of ``BLOCKS[:stop]`` (what the cache depends on)."""
    digest = hashlib.sha256()
    for name in BLOCKS[:stop]:
        for key, tensor in sorted(model.block(name).state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(file_bytes: bytes, *, fingerprint: str, spec: PreprocessSpec, stop: int, view: str) -> str:
    meta = json.dumps({"w": fingerprint, "spec": spec.to_dict(), "stop": BLOCKS[stop - 1], "view": view}, sort_keys=True)
    return hashlib.sha256(hashlib.sha256(file_bytes).digest() + meta.encode()).hexdigest()


def cached_features(
    model: WatermarkNet,
    items: Sequence[tuple[Sample, str]],
    spec: PreprocessSpec,
    *,
    stop: int,
    cache_dir: Path,
    base_stop: int | None = None,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "cache",
) -> TensorDataset:
    """Features of ``BLOCKS[:stop]`` for every item, from disk when already computed.

    Missing entries are computed in batches in eval mode and written atomically: from
    the (cached) features at ``base_stop`` when ``0 < base_stop < stop``, else from pixels.
    """
    if not 0 < stop < len(BLOCKS) + 1:
        raise ValueError(f"stop={stop}: must be in 1..{len(BLOCKS)}")
    derive = base_stop is not None and 0 < base_stop < stop
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = frozen_fingerprint(model, stop)
    keys = [
        cache_key(sample.path.read_bytes(), fingerprint=fingerprint, spec=spec, stop=stop, view=view)
        for sample, view in items
    ]
    features: list[torch.Tensor | None] = [None] * len(items)
    missing: list[int] = []
    for i, key in enumerate(keys):
        path = cache_dir / f"{key}.pt"
        if path.exists():
            try:
                features[i] = torch.load(path, map_location="cpu", weights_only=True)
                continue
            except Exception:  # a damaged entry is recomputed, not trusted
                log.warning("cache entry %s unreadable; recomputing", path)
        missing.append(i)
    hits = len(items) - len(missing)
    base: TensorDataset | None = None
    if derive and missing:
        base = cached_features(
            model, [items[i] for i in missing], spec, stop=base_stop, cache_dir=cache_dir,
            batch_size=batch_size, progress=progress, desc=f"{desc} (base)",
        )
    was_training = model.training
    model.eval()
    with torch.inference_mode(), tqdm(total=len(missing), desc=desc, disable=None if progress and missing else True, unit="img") as bar:
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            if base is not None:
                batch = torch.stack([base.features[j] for j in range(start, start + len(chunk))])
                out = model.features(batch, start=base_stop, stop=stop)
            else:
                batch = torch.stack([pixel_tensor(*items[i], spec) for i in chunk])
                out = model.features(batch, stop=stop)
            for i, feat in zip(chunk, out):
                feat = feat.clone()
                features[i] = feat
                path = cache_dir / f"{keys[i]}.pt"
                tmp = path.with_name(path.name + ".tmp")
                torch.save(feat, tmp)
                tmp.replace(path)
            bar.update(len(chunk))
    model.train(was_training)
    log.info("%s: %d cached, %d computed (cut after %s)", desc, hits, len(missing), BLOCKS[stop - 1])
    labels = [float(sample.label) for sample, _ in items]
    return TensorDataset([f for f in features if f is not None], labels)
