"""Files of the demo dataset: train/val pairs, the shuffled test split, the evaluation sets and per-file entries.

The folder layout is described in :mod:`train.synth.demo`, which calls these writers on a
staging folder and then writes the manifest.
"""

from __future__ import annotations

import csv
import logging
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from train.duplicates import write_pairs_file
from train.synth.demo_crops import (
    CROP_SCALE,
    HARD_NEGATIVE_EVAL_SPLIT,
    Crop,
    make_crops,
    make_hard_crops,
    make_heldout_crops,
)
from train.synth.photos import INSTALL_HINT, MIN_BASE_PHOTOS, BasePhoto, load_photo
from train.synth.scene_text import HARD_NEGATIVE_KINDS

log = logging.getLogger("train.synth.demo")

TEST_LABELS_FILE = "test_labels.csv"
TEST_LABEL_COLUMNS = ["file", "label", "family", "base_photo", "font", "placement", "scene_text"]
STYLES_FILE = "styles.csv"
STYLE_COLUMNS = ["file", "label", "family", "font", "placement", "split", "scene_text"]
EVAL_DIR = "eval"
HELDOUT_STYLES_SET = "heldout_styles"
HARD_NEGATIVES_SET = "hard_negatives"
HARD_NEGATIVES_PER_EVAL_CROP = 2


@dataclass
class Gathered:
    """What the pass over the base photos wrote (train/val) and kept for later (test and eval crops)."""

    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(
        default_factory=lambda: {s: {"positive": 0, "negative": 0} for s in ("train", "val", "test")}
    )
    scene_counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in ("train", "val", "test")})
    test_crops: list[Crop] = field(default_factory=list)
    heldout_crops: list[Crop] = field(default_factory=list)
    hard_crops: list[Crop] = field(default_factory=list)
    used: list[BasePhoto] = field(default_factory=list)


@dataclass(frozen=True)
class BuildOptions:
    """The demo builder's options (checked by :func:`train.synth.demo.build_demo_dataset`),
    passed whole to every step of the build."""

    seed: int
    crops_per_photo: int
    holdout_crops_per_photo: int
    image_size: int
    progress: bool
    hard_negative_fraction: float
    eval_crops_per_photo: int


def write_photo_crops(root: Path, photos: list[BasePhoto], assignment: dict[str, str], options: BuildOptions) -> Gathered:
    """Crop every base photo; write train/val pairs and their pairs.csv, keep the test photos' crops.

    Raises:
        RuntimeError: fewer than :data:`MIN_BASE_PHOTOS` photos could be read.
    """
    from tqdm import tqdm

    got = Gathered()
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "val": []}  # written to SPLIT/pairs.csv
    seed, image_size, eval_crops_per_photo = options.seed, options.image_size, options.eval_crops_per_photo
    for photo in tqdm(photos, desc="demo dataset", unit="photo", disable=None if options.progress else True):
        split = assignment[photo.group]
        try:
            image = load_photo(photo.path, min_side=round(image_size / CROP_SCALE[0]))
        except (OSError, ValueError) as exc:  # unreadable or truncated file
            log.warning("skipping base photo %s (%s): %s", photo.name, photo.source, exc)
            continue
        crops = make_crops(
            photo,
            image,
            seed=seed,
            crops_per_photo=options.crops_per_photo if split == "train" else options.holdout_crops_per_photo,
            image_size=image_size,
            hard_negative_fraction=options.hard_negative_fraction,
        )
        got.used.append(photo)
        got.scene_counts[split] += sum(crop.scene is not None for crop in crops)
        if split == "test":
            got.test_crops.extend(crops)
            if eval_crops_per_photo:  # evaluation sets come from test photos only
                got.heldout_crops += make_heldout_crops(
                    photo, image, seed=seed, count=eval_crops_per_photo, image_size=image_size
                )
                got.hard_crops += make_hard_crops(
                    photo, image, seed=seed, count=HARD_NEGATIVES_PER_EVAL_CROP * eval_crops_per_photo,
                    image_size=image_size,
                )  # fmt: skip
            continue
        for crop in crops:
            for label, data in (("positive", crop.positive), ("negative", crop.negative)):
                rel = f"{split}/{label}/{crop.stem}.jpg"
                (root / rel).write_bytes(data)  # type: ignore[arg-type]
                got.files[rel] = _file_entry(crop, label)
                got.counts[split][label] += 1
            pairs[split].append((f"positive/{crop.stem}.jpg", f"negative/{crop.stem}.jpg"))
    if len(got.used) < MIN_BASE_PHOTOS:
        raise RuntimeError(
            f"only {len(got.used)} base photos could be read (need at least {MIN_BASE_PHOTOS}); {INSTALL_HINT}"
        )
    for split, declared in pairs.items():
        write_pairs_file(root / split, sorted(declared))
    return got


def write_test_split(root: Path, got: Gathered, seed: int) -> None:
    """Shuffle the test crops, keep one seeded version of each (balanced), write test/ and test_labels.csv."""
    test_crops, files, counts = got.test_crops, got.files, got.counts
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


def write_eval_sets(root: Path, got: Gathered) -> dict[str, Any]:
    """Write eval/heldout_styles and eval/hard_negatives; returns their manifest entries."""
    evals: dict[str, Any] = {}
    evals[HELDOUT_STYLES_SET] = _write_eval_set(
        root, HELDOUT_STYLES_SET, got.heldout_crops, got.files, ("positive", "negative"),
        note="positives drawn from the heldout style pool (fonts, logos, icons, placements never in "
             "training); negatives are the same crops clean; pairs share the file stem",
    )  # fmt: skip
    evals[HARD_NEGATIVES_SET] = _write_eval_set(
        root, HARD_NEGATIVES_SET, got.hard_crops, got.files, ("negative",),
        note="negatives only: test crops with opaque scene text (every kind; fonts from the heldout pool)",
    )  # fmt: skip
    evals[HARD_NEGATIVES_SET]["scene_text_split"] = HARD_NEGATIVE_EVAL_SPLIT
    evals[HARD_NEGATIVES_SET]["kinds"] = {
        kind: sum(c.scene is not None and c.scene.kind == kind for c in got.hard_crops)
        for kind in HARD_NEGATIVE_KINDS
    }
    evals[HELDOUT_STYLES_SET]["style_split"] = "heldout"
    return evals


def _write_eval_set(
    root: Path, name: str, crops: list[Crop], files: dict[str, dict[str, Any]], labels: tuple[str, ...], note: str
) -> dict[str, Any]:
    """Write one evaluation set (its labels' folders and styles.csv); returns its manifest entry."""
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


def _file_entry(crop: Crop, label: str) -> dict[str, Any]:
    """Manifest entry of one written file: crop, JPEG history, watermark and scene text."""
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


def _scene_kind(crop: Crop) -> str:
    """Scene-text kind of a crop, or "" when it has none."""
    return crop.scene.kind if crop.scene is not None else ""


def _style_row(rel: str, crop: Crop, positive: bool) -> dict[str, Any]:
    """One styles.csv row of an evaluation set."""
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
    """Write ``rows`` with a header of ``columns``."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
