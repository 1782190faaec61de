"""Training augmentations: deterministic variants of a photo, each a training item of its own.

A training item is a (sample, augmentation) pair. The augmentations never crop, so a
watermark stays in every variant of a positive, and being deterministic, each variant's
features can be cached like any other input (:mod:`train.cache`). (Test-time views of
:mod:`train.predict` are a different thing: variants averaged at prediction time.)
"""

from __future__ import annotations

import io

from PIL import Image, ImageEnhance, ImageOps

AUGMENTATIONS = ("orig", "hflip", "photo")
LEVELS = {0: ("orig",), 1: ("orig", "hflip"), 2: ("orig", "hflip", "photo")}


def augmentations_for(level: int) -> tuple[str, ...]:
    """The augmentations of ``--augment LEVEL``: 0 none, 1 + mirror, 2 + photometric."""
    if int(level) not in LEVELS:
        raise ValueError(f"--augment {level!r}: allowed are {', '.join(map(str, LEVELS))} (or false/true)")
    return LEVELS[int(level)]


def augment(image: Image.Image, name: str) -> Image.Image:
    """One deterministic augmentation of an image.

    ``photo`` is a mirrored copy with other exposure, contrast and colour, saved again as
    a JPEG of quality 70: what a re-shot, re-encoded seller photo looks like.
    """
    if name == "orig":
        return image
    if name == "hflip":
        return ImageOps.mirror(image)
    if name == "photo":
        out = ImageOps.mirror(image)
        out = ImageEnhance.Brightness(out).enhance(0.85)
        out = ImageEnhance.Contrast(out).enhance(1.2)
        out = ImageEnhance.Color(out).enhance(0.75)
        buffer = io.BytesIO()
        out.save(buffer, format="JPEG", quality=70)
        buffer.seek(0)
        return Image.open(buffer).convert("RGB")
    raise ValueError(f"augmentation {name!r}: allowed are {', '.join(AUGMENTATIONS)}")
