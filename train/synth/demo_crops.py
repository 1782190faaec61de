"""Crops of the demo dataset: a clean crop of a base photo, its scene text and watermark, one JPEG history for both.

Every crop is a pair under one file stem (clean ``negative``, watermarked ``positive``)
unless it is a hard-negative-only crop; both versions get the same upload re-encode and
save quality, so the only difference between them is the mark.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass

from PIL import Image

from train.synth.info import SceneTextInfo, WatermarkInfo
from train.synth.photos import BasePhoto
from train.synth.render import JPEG_QUALITY_RANGE, jpeg_roundtrip, render_watermark
from train.synth.scene_text import HARD_NEGATIVE_KINDS, render_scene_text

TRAIN_STYLE_SPLIT = "train"  # style pool of everything training, validation and test use
HARD_NEGATIVE_EVAL_SPLIT = "heldout"  # font pool of the scene text in eval/hard_negatives
CROP_SCALE = (0.4, 1.0)  # side of a crop relative to the photo's short side
CROP_ASPECT = (0.8, 1.25)  # width / height of a crop before it is resized to a square
WHOLE_PHOTO_PROB = 0.2
UPLOAD_JPEG_PROB = 0.5  # extra re-encode before saving, applied to both versions
SAVE_QUALITY = (85, 95)


def _random_crop(rng: random.Random, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """A seeded crop box: the whole photo now and then, else a square-ish part of it."""
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
    """JPEG bytes of ``image`` at ``quality``."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class Crop:
    """One crop of a base photo, encoded: its clean and (unless a hard-negative-only crop) watermarked JPEG."""

    photo: BasePhoto
    stem: str
    box: tuple[int, int, int, int]
    negative: bytes
    positive: bytes | None  # None: a hard-negative-only crop (eval/hard_negatives)
    info: WatermarkInfo | None
    upload_quality: int | None
    save_quality: int
    scene: SceneTextInfo | None = None


def _crop_clean(
    rng: random.Random, image: Image.Image, image_size: int
) -> tuple[tuple[int, int, int, int], Image.Image]:
    """A random crop of ``image``, resized to a square of ``image_size``."""
    box = _random_crop(rng, image.size)
    return box, image.crop(box).resize((image_size, image_size), Image.Resampling.BICUBIC, reducing_gap=3.0)


def _finish(
    photo: BasePhoto,
    stem: str,
    box: tuple[int, int, int, int],
    clean: Image.Image,
    marked: Image.Image | None,
    info: WatermarkInfo | None,
    scene: SceneTextInfo | None,
    rng: random.Random,
) -> Crop:
    """Give the clean and marked versions the same JPEG history and encode them."""
    upload = rng.randint(*JPEG_QUALITY_RANGE) if rng.random() < UPLOAD_JPEG_PROB else None
    if upload is not None:
        clean = jpeg_roundtrip(clean, upload)
        marked = jpeg_roundtrip(marked, upload) if marked is not None else None
    quality = rng.randint(*SAVE_QUALITY)
    return Crop(
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


def make_crops(
    photo: BasePhoto,
    image: Image.Image,
    *,
    seed: int,
    crops_per_photo: int,
    image_size: int,
    hard_negative_fraction: float,
) -> list[Crop]:
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
            clean, scene = render_scene_text(clean, scene_rng, split=TRAIN_STYLE_SPLIT)
        marked, info = render_watermark(clean, rng, jpeg_prob=0.0, split=TRAIN_STYLE_SPLIT)
        crops.append(_finish(photo, f"{photo.name}_c{index:02d}", box, clean, marked, info, scene, rng))
    return crops


def make_heldout_crops(photo: BasePhoto, image: Image.Image, *, seed: int, count: int, image_size: int) -> list[Crop]:
    """Pairs whose watermark comes from the ``heldout`` style pool (no scene text)."""
    rng = random.Random(f"{seed}:{photo.name}:heldout")
    crops = []
    for index in range(count):
        box, clean = _crop_clean(rng, image, image_size)
        marked, info = render_watermark(clean, rng, jpeg_prob=0.0, split="heldout")
        crops.append(_finish(photo, f"{photo.name}_h{index:02d}", box, clean, marked, info, None, rng))
    return crops


def make_hard_crops(photo: BasePhoto, image: Image.Image, *, seed: int, count: int, image_size: int) -> list[Crop]:
    """Negatives with scene text (every kind in turn, fonts from the ``heldout`` pool)."""
    rng = random.Random(f"{seed}:{photo.name}:hard")
    kinds = HARD_NEGATIVE_KINDS
    offset = rng.randrange(len(kinds))
    crops = []
    for index in range(count):
        box, clean = _crop_clean(rng, image, image_size)
        kind = kinds[(offset + index) % len(kinds)]
        clean, scene = render_scene_text(clean, rng, split=HARD_NEGATIVE_EVAL_SPLIT, kind=kind)
        crops.append(_finish(photo, f"{photo.name}_s{index:02d}", box, clean, None, None, scene, rng))
    return crops
