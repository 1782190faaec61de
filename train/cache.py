"""Model inputs for training: pixels from files, or cached features of frozen blocks.

When the lower blocks stay frozen for a whole run, their output for an image never
changes, so it is computed once and stored on disk, keyed by the image bytes, the
frozen weights, the preprocessing spec, the cut point, the augmentation, the
compute precision and the storage type. Later epochs (and later runs and tuning trials)
then train only the upper blocks.

The store is a folder of ``.npy`` files, one per item (``CACHE/ab/<key>.npy``), float16
by default (half the bytes of float32; Inception activations are far inside its range).
Entries are written atomically (:mod:`train.io`) and read back per batch by
:class:`FeatureDataset`, so the process holds one batch of features at a time: its
memory does not grow with the dataset (the operating system's page cache may keep
recently read files, and gives that memory back under pressure). An entry that does not
read back as a 3-D array of the store's type is recomputed, never trusted.

Deeper cuts are derived from a shallower *base* cut when one is given: the features
after ``Mixed_7a`` are computed from the cached features after ``Mixed_5d`` instead
of from pixels, so tuning trials that unfreeze different blocks share one base cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from handler.preprocess import PreprocessSpec, image_to_tensor, load_image_file
from train.augment import augment
from train.data import Sample
from train.io import DiskFullError, write_with
from train.model import BLOCKS, Runtime, WatermarkNet

log = logging.getLogger(__name__)

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


def pixel_tensor(sample: Sample, augmentation: str, spec: PreprocessSpec) -> torch.Tensor:
    """The normalised model input for one file and augmentation (serving preprocessing)."""
    image = load_image_file(sample.path, max_pixels=spec.max_pixels, draft_size=spec.draft_size)
    return image_to_tensor(augment(image, augmentation), spec)


class PixelDataset(Dataset):
    """(input, label, group) from image files, preprocessed as the handler does."""

    def __init__(self, items: Sequence[tuple[Sample, str]], spec: PreprocessSpec) -> None:
        self.items = list(items)
        self.spec = spec

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        sample, augmentation = self.items[index]
        return pixel_tensor(sample, augmentation, self.spec), float(sample.label)


class FeatureDataset(Dataset):
    """(features, label) read from the disk cache one item at a time (float32 tensors)."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[float], dtype: str) -> None:
        self.paths = list(paths)
        self.labels = list(labels)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        array = read_entry(self.paths[index], self.dtype)
        if array is None:
            raise RuntimeError(
                f"feature cache entry {self.paths[index]} is missing or damaged (changed during the run?); "
                "rerun to recompute it"
            )
        return torch.from_numpy(array.astype(np.float32)), self.labels[index]


def check_store_dtype(dtype: str) -> str:
    if dtype not in STORE_DTYPES:
        raise ValueError(f"--cache-dtype {dtype!r}: allowed are {', '.join(STORE_DTYPES)}")
    return dtype


def frozen_fingerprint(model: WatermarkNet, stop: int) -> str:
    """Hash of the weights and buffers of ``BLOCKS[:stop]`` (what the cache depends on)."""
    digest = hashlib.sha256()
    for name in BLOCKS[:stop]:
        for key, tensor in sorted(model.block(name).state_dict().items()):
            digest.update(f"{name}.{key}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(
    file_bytes: bytes, *, fingerprint: str, spec: PreprocessSpec, stop: int, augmentation: str, dtype: str = "float16",
    amp: str = "none",
) -> str:
    """The entry's name: a hash of the file bytes and of everything its features depend on.
    (The augmentation is stored under the key ``view``, its former name, so existing
    caches stay valid.)"""
    meta = json.dumps(
        {"w": fingerprint, "spec": spec.to_dict(), "stop": BLOCKS[stop - 1], "view": augmentation, "dtype": dtype,
         "amp": amp, "format": 2},
        sort_keys=True,
    )
    return hashlib.sha256(hashlib.sha256(file_bytes).digest() + meta.encode()).hexdigest()


def entry_path(cache_dir: Path, key: str) -> Path:
    """Where an entry lives: 256 sub-folders keep directories small for large sets."""
    return cache_dir / key[:2] / f"{key}.npy"


def read_entry(path: Path, dtype: str) -> np.ndarray | None:
    """The stored array, or None when the file is missing, damaged or of another type."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.ndim != 3 or array.dtype != STORE_DTYPES[dtype]:
        return None
    return array


def entry_ok(path: Path, dtype: str) -> bool:
    """Whether ``path`` holds a whole 3-D array of the store's type, from its header and size.

    Cheap (no data read): used to find what is missing before a run. A file cut short
    has fewer bytes than its header promises and is recomputed.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, stored = read_header(handle)
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError):
        return False
    expected = offset + int(np.prod(shape)) * stored.itemsize
    return len(shape) == 3 and not fortran and stored == STORE_DTYPES[dtype] and size == expected


def write_entry(path: Path, feature: torch.Tensor, dtype: str) -> None:
    """Store one feature map atomically in the store's type (overflow is an error)."""
    with np.errstate(over="ignore"):
        array = feature.detach().float().cpu().numpy().astype(STORE_DTYPES[dtype])
    if not np.isfinite(array).all():
        raise ValueError(f"feature cache: values of {path.name} overflow {dtype}; use --cache-dtype float32")
    write_with(path, lambda handle: np.save(handle, array, allow_pickle=False))


def as_stored(features: torch.Tensor, dtype: str) -> torch.Tensor:
    """``features`` rounded to the store's type and back to float32, as a cache read returns them."""
    return features.float().to(getattr(torch, dtype)).float()


def _check_free_space(cache_dir: Path, count: int, entry_bytes: int) -> None:
    """Refuse to start filling a cache that cannot fit: before anything is written."""
    need = count * (entry_bytes + 4096)
    free = shutil.disk_usage(cache_dir).free
    if need > free:
        raise DiskFullError(
            f"feature cache {cache_dir}: {count} entries of {entry_bytes / 1e6:.2f} MB need {need / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free; free space, point --cache-dir elsewhere or pass --cache false"
        )


def entry_paths(
    model: WatermarkNet, items: Sequence[tuple[Sample, str]], spec: PreprocessSpec, *, stop: int, cache_dir: Path,
    dtype: str, amp: str,
) -> list[Path]:
    """The cache file of every item's features after ``BLOCKS[:stop]``."""
    fingerprint = frozen_fingerprint(model, stop)
    return [
        entry_path(cache_dir, cache_key(
            sample.path.read_bytes(), fingerprint=fingerprint, spec=spec, stop=stop, augmentation=augmentation,
            dtype=dtype, amp=amp,
        ))
        for sample, augmentation in items
    ]


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
    dtype: str = "float16",
    runtime: Runtime | None = None,
) -> FeatureDataset:
    """Features of ``BLOCKS[:stop]`` for every item, from disk when already computed.

    Missing entries are computed in batches in eval mode (under ``runtime``'s device,
    layout and precision) and written atomically. With ``0 < base_stop < stop`` the
    features at ``base_stop`` are cached too, in the same pass, and later deeper or
    shallower cuts start from them instead of from pixels (tuning trials that unfreeze
    different blocks share one base). Nothing is kept in memory: the returned dataset
    reads the entries per item.

    Raises:
        DiskFullError: the entries cannot fit, or the disk filled up while writing
            (entries written before stay valid; nothing half-written is left).
    """
    if not 0 < stop < len(BLOCKS) + 1:
        raise ValueError(f"stop={stop}: must be in 1..{len(BLOCKS)}")
    check_store_dtype(dtype)
    runtime = runtime or Runtime()
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = entry_paths(model, items, spec, stop=stop, cache_dir=cache_dir, dtype=dtype, amp=runtime.amp)
    missing = [i for i, path in enumerate(paths) if not entry_ok(path, dtype)]
    for i in missing:
        if paths[i].exists():
            log.warning("cache entry %s unreadable; recomputing", paths[i])
    base_paths = None
    if base_stop is not None and 0 < base_stop < stop and missing:
        base_paths = entry_paths(
            model, [items[i] for i in missing], spec, stop=base_stop, cache_dir=cache_dir, dtype=dtype, amp=runtime.amp
        )
    was_training = model.training
    model.eval()
    try:
        _fill(model, items, spec, missing, paths, base_paths, base_stop, stop, batch_size, dtype, runtime, progress, desc)
    finally:
        model.train(was_training)
    log.info("%s: %d cached, %d computed (cut after %s)", desc, len(items) - len(missing), len(missing), BLOCKS[stop - 1])
    return FeatureDataset(paths, [float(sample.label) for sample, _ in items], dtype)


def _fill(
    model: WatermarkNet,
    items: Sequence[tuple[Sample, str]],
    spec: PreprocessSpec,
    missing: list[int],
    paths: list[Path],
    base_paths: list[Path] | None,
    base_stop: int | None,
    stop: int,
    batch_size: int,
    dtype: str,
    runtime: Runtime,
    progress: bool,
    desc: str,
) -> None:
    """Compute and write the missing entries (and their base entries), one batch at a time."""
    bar = tqdm(total=len(missing), desc=desc, disable=None if progress and missing else True, unit="img")
    checked = False
    with torch.inference_mode(), bar:
        for offset in range(0, len(missing), batch_size):
            chunk = missing[offset : offset + batch_size]
            bases = [read_entry(p, dtype) for p in base_paths[offset : offset + len(chunk)]] if base_paths else []
            with runtime.autocast():
                if bases and all(b is not None for b in bases):
                    batch = torch.stack([torch.from_numpy(b.astype(np.float32)) for b in bases])
                    out = model.features(runtime.input(batch), start=base_stop, stop=stop)
                    new_bases = None
                else:
                    batch = runtime.input(torch.stack([pixel_tensor(*items[i], spec) for i in chunk]))
                    if base_paths:
                        new_bases = model.features(batch, stop=base_stop)
                        # Continue from the base as stored, so a cut computed in this pass equals
                        # one derived later from the cached base (same rounding either way).
                        out = model.features(as_stored(new_bases, dtype), start=base_stop, stop=stop)
                    else:
                        new_bases, out = None, model.features(batch, stop=stop)
            if not checked:
                per_item = out[0].numel() + (new_bases[0].numel() if new_bases is not None else 0)
                _check_free_space(paths[chunk[0]].parent.parent, len(missing), per_item * np.dtype(STORE_DTYPES[dtype]).itemsize)
                checked = True
            if new_bases is not None:
                for path, feature in zip(base_paths[offset : offset + len(chunk)], new_bases):
                    write_entry(path, feature.contiguous(), dtype)
            for i, feature in zip(chunk, out):
                write_entry(paths[i], feature.contiguous(), dtype)
            bar.update(len(chunk))
