"""Build the built-in demo dataset from real photos that installed packages ship.

Base photos come from the packages listed in :mod:`train.synth.photos`. Each base photo
gives random square-ish crops (:mod:`train.synth.demo_crops`): a few per training photo,
more per validation and test photo (``holdout_crops_per_photo``, so that the
threshold's false-positive target rests on hundreds of clean validation images and the
test figures on hundreds of test images, without more training time); every crop is
written twice under the same file stem, clean in ``negative/`` and with a synthetic
watermark (:func:`train.synth.render_watermark`, ``split="train"`` style pool) in
``positive/``. A fraction of the crops (``hard_negative_fraction``, default 30 %) first
get opaque *scene text* (a product label, print on the object, a price tag or a box
face): both versions of such a pair carry the same scene text, which teaches that scene
text is not the signal. The split is by base photo (photos of the same shoot stay
together), so no background is shared between train, val, test and the evaluation sets::

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
    OUT/manifest.json            seed, parameters, inputs (fonts and photo sources used),
                                 counts, base photos, style pools, eval sets, per-file
                                 styles (watermark and scene text)

Clean and watermarked versions of a crop go through the same JPEG history, so the
only difference between them is the mark.

The inputs are declared, so the same seed gives the same bytes on every machine of the
same kind: the fonts are those of :data:`train.synth.fonts.DECLARED_FONT_PACKAGES` (what
``scripts/setup_fonts.sh`` installs) plus matplotlib's bundled ones, whatever else is
installed (:func:`declared_fonts_only`), and the photos come from the pinned Python
packages of :data:`train.synth.photos.DECLARED_PHOTO_SOURCES`. A declared font package or
photo source that is missing is announced with a warning and recorded in the manifest
(``inputs``), with a digest of the font files used. The output folder is built next to OUT and
renamed into place, so OUT is never left half-written.

Usage::

    python -m train demo-data OUT [--seed 0] [--crops-per-photo 5] [--holdout-crops-per-photo 30]
        [--image-size 384]
        [--hard-negative-fraction 0.3] [--eval-crops-per-photo 6] [--overwrite] [--no-progress]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from train.io import staged_folder
from train.synth.demo_crops import (
    CROP_ASPECT,
    CROP_SCALE,
    SAVE_QUALITY,
    TRAIN_STYLE_SPLIT,
    UPLOAD_JPEG_PROB,
    WHOLE_PHOTO_PROB,
)
from train.synth.demo_files import (
    TEST_LABELS_FILE, BuildOptions, Gathered, write_eval_sets, write_photo_crops, write_test_split,
)
from train.synth.families import FAMILY_WEIGHTS, STYLE_FAMILIES
from train.synth import icons
from train.synth.fonts import DECLARED_FONT_PACKAGES, available_fonts, declared_font_files, pin_font_files
from train.synth.photos import INSTALL_HINT, MIN_BASE_PHOTOS, BasePhoto, find_base_photos, missing_photo_sources
from train.synth.render import style_pools
from train.synth.scene_text import HARD_NEGATIVE_KINDS
from train.synth.text import SCRIPTS

log = logging.getLogger("train.synth.demo")

MANIFEST_FILE = "manifest.json"
HARD_NEGATIVE_FRACTION = 0.3
EVAL_CROPS_PER_PHOTO = 6
HOLDOUT_CROPS_PER_PHOTO = 30
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
MIN_IMAGE_SIZE = 32


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
    """Refuse a file, or a non-empty folder unless ``overwrite``."""
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
    holdout_crops_per_photo: int = HOLDOUT_CROPS_PER_PHOTO,
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
        crops_per_photo: crops taken from each training base photo (each gives a clean
            and a watermarked image).
        holdout_crops_per_photo: crops taken from each validation and test base photo
            (validation: pairs; test: one version of each).
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
        ValueError: ``crops_per_photo`` or ``holdout_crops_per_photo`` < 1, ``image_size`` < 32,
            ``hard_negative_fraction`` outside 0..1 or ``eval_crops_per_photo`` < 0.
        RuntimeError: fewer than 10 base photos were found (names the packages to install).
    """
    out_dir = Path(out_dir)
    if not isinstance(crops_per_photo, int) or crops_per_photo < 1:
        raise ValueError(f"crops_per_photo={crops_per_photo!r}: allowed is an integer >= 1")
    if not isinstance(holdout_crops_per_photo, int) or holdout_crops_per_photo < 1:
        raise ValueError(f"holdout_crops_per_photo={holdout_crops_per_photo!r}: allowed is an integer >= 1")
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
    inputs = {"missing_photo_sources": missing_photo_sources(photos)}
    if inputs["missing_photo_sources"]:
        log.warning(
            "declared photo sources missing: %s; the dataset differs from the reference one (install: %s)",
            ", ".join(inputs["missing_photo_sources"]), INSTALL_HINT,
        )
    with declared_fonts_only() as fonts_used, staged_folder(out_dir) as tmp_dir:
        inputs.update(fonts_used)
        options = BuildOptions(
            seed=seed, crops_per_photo=crops_per_photo, holdout_crops_per_photo=holdout_crops_per_photo,
            image_size=image_size, progress=progress,
            hard_negative_fraction=float(hard_negative_fraction), eval_crops_per_photo=eval_crops_per_photo,
        )
        manifest = _build_into(tmp_dir, photos, inputs, options)
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


@contextlib.contextmanager
def declared_fonts_only() -> Iterator[dict[str, Any]]:
    """Build with the declared fonts alone (:func:`train.synth.fonts.declared_font_files`):
    a font installed by anything else, or added through ``$WATERMARK_FONT_DIRS``, does not
    change the dataset. A declared package that is missing is announced here and recorded
    in the manifest; the build then uses the declared fonts that are present.

    Yields:
        What the manifest records: missing font packages, the number of font files and
        one sha256 over their names and bytes.
    """
    files, missing = declared_font_files()
    if missing:
        log.warning(
            "declared font packages missing: %s; the dataset differs from the reference one "
            "(run scripts/setup_fonts.sh)", ", ".join(missing),
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    pin_font_files(files)
    icons.icon_source.cache_clear()
    try:
        yield {
            "font_packages": list(DECLARED_FONT_PACKAGES), "missing_font_packages": missing,
            "font_files": len(files), "fonts_sha256": digest.hexdigest(),
        }
    finally:
        pin_font_files(None)
        icons.icon_source.cache_clear()


def _manifest(
    got: Gathered, assignment: dict[str, str], evals: dict[str, Any], inputs: dict[str, Any], options: BuildOptions
) -> dict[str, Any]:
    """The manifest: seed, parameters, counts, base photos, style pools, eval sets, per-file styles."""
    used = got.used
    return {
        "format": 2,
        "seed": options.seed,
        "parameters": {
            "crops_per_photo": options.crops_per_photo,
            "holdout_crops_per_photo": options.holdout_crops_per_photo,
            "image_size": options.image_size,
            "split_fractions": SPLIT_FRACTIONS,
            "crop_scale": list(CROP_SCALE),
            "crop_aspect": list(CROP_ASPECT),
            "whole_photo_prob": WHOLE_PHOTO_PROB,
            "upload_jpeg_prob": UPLOAD_JPEG_PROB,
            "save_quality": list(SAVE_QUALITY),
            "style_families": list(STYLE_FAMILIES),
            "family_weights": FAMILY_WEIGHTS,
            "fonts": {script: [p.name for p in available_fonts(script)] for script in SCRIPTS},
            "style_split": TRAIN_STYLE_SPLIT,
            "hard_negative_fraction": options.hard_negative_fraction,
            "hard_negative_kinds": list(HARD_NEGATIVE_KINDS),
            "eval_crops_per_photo": options.eval_crops_per_photo,
        },
        "counts": got.counts,
        "scene_text_counts": got.scene_counts,
        "base_photo_count": len(used),
        "base_photos": {
            split: sorted(p.name for p in used if assignment[p.group] == split) for split in ("train", "val", "test")
        },
        "base_photo_sources": {p.name: {"source": p.source, "group": p.group} for p in used},
        "inputs": inputs,
        "test_labels": TEST_LABELS_FILE,
        "style_pools": {split: style_pools(split) for split in ("train", "heldout")},
        "eval": evals,
        "files": dict(sorted(got.files.items())),
    }


def _build_into(root: Path, photos: list[BasePhoto], inputs: dict[str, Any], options: BuildOptions) -> dict[str, Any]:
    """Write the whole dataset into ``root`` (a staging folder) and return the manifest written there."""
    assignment = _split_groups(photos, options.seed)
    for split in ("train", "val"):
        for label in ("positive", "negative"):
            (root / split / label).mkdir(parents=True, exist_ok=True)
    (root / "test").mkdir(parents=True, exist_ok=True)
    got = write_photo_crops(root, photos, assignment, options)
    write_test_split(root, got, options.seed)
    evals = write_eval_sets(root, got) if options.eval_crops_per_photo else {}
    manifest = _manifest(got, assignment, evals, inputs, options)
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


# -------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m train demo-data OUT [options]`` (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog="python -m train demo-data",
        description="Build the demo watermark dataset (clean/watermarked pairs, scene-text hard negatives and "
        "evaluation sets) from photos bundled with packages.",
    )
    parser.add_argument("out", type=Path, help="output folder (must not exist or be empty, unless --overwrite)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--crops-per-photo", type=int, default=5, help="crops per training base photo (default 5)")
    parser.add_argument(
        "--holdout-crops-per-photo",
        type=int,
        default=HOLDOUT_CROPS_PER_PHOTO,
        help=f"crops per validation and test base photo (default {HOLDOUT_CROPS_PER_PHOTO})",
    )
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
            holdout_crops_per_photo=args.holdout_crops_per_photo,
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
