"""Logos: RGBA images that installed packages ship, :func:`prepare_logo` for any image, and :func:`logo_pool`.

Procedural badges (``badge:<shape>``) are drawn by :mod:`train.synth.badges`; which
logos belong to which pool is :mod:`train.synth.splits`.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from train.synth.splits import BADGE_SHAPES, PACKAGE_LOGO_SPLIT, check_split

# RGBA images that installed packages ship: name -> (package, path inside it).
PACKAGE_LOGOS = {
    "mpl-logo2": ("matplotlib", "mpl-data/sample_data/logo2.png"),
    "mpl-icon": ("matplotlib", "mpl-data/images/matplotlib_large.png"),
    "skimage-logo": ("skimage", "data/logo.png"),
}


def _package_file(module: str, rel: str) -> Path | None:
    """File ``rel`` inside installed package ``module`` (found without importing it), or None."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin).parent / rel
    return path if path.is_file() else None


def logo_pool(split: str = "any") -> list[str]:
    """Logo names of one style pool: ``badge:<shape>`` and ``image:<name>`` (installed only)."""
    check_split(split)
    names = [f"badge:{shape}" for shape, pool in BADGE_SHAPES.items() if split in ("any", pool)]
    names += [
        f"image:{name}"
        for name, (module, rel) in PACKAGE_LOGOS.items()
        if split in ("any", PACKAGE_LOGO_SPLIT[name]) and _package_file(module, rel) is not None
    ]
    return names


def prepare_logo(logo: Image.Image | str | os.PathLike) -> Image.Image:
    """Turn any image (or image file) into a tight RGBA logo.

    An image with transparency keeps its alpha. A fully opaque one has the flat colour
    around it (connected to the border, within 40 levels of the corners' colour) made
    transparent, unless that would remove almost everything. The result is cropped to
    its visible pixels.

    Raises:
        ValueError: the image is fully transparent.
    """
    if not isinstance(logo, Image.Image):
        with Image.open(logo) as handle:
            handle.load()
            logo = handle.copy()
    rgba = logo.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if alpha.size and int(alpha.min()) == 255 and min(rgba.size) >= 3:
        from scipy import ndimage

        rgb = np.asarray(rgba.convert("RGB"), dtype=np.int16)
        corners = np.stack([rgb[0, 0], rgb[0, -1], rgb[-1, 0], rgb[-1, -1]])
        near = np.abs(rgb - np.median(corners, axis=0)).max(axis=-1) <= 40
        labels, _ = ndimage.label(near)
        edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
        background = np.isin(labels, np.unique(edge[edge > 0]))
        if 0.0 < background.mean() < 0.97:
            keyed = Image.fromarray(np.where(background, 0, 255).astype(np.uint8), "L")
            rgba.putalpha(keyed.filter(ImageFilter.GaussianBlur(0.6)))
    bbox = rgba.getchannel("A").getbbox()
    if bbox is None:
        raise ValueError("logo image is fully transparent")
    return rgba.crop(bbox)


@functools.lru_cache(maxsize=8)
def package_logo(name: str) -> Image.Image:
    """The prepared RGBA logo ``name`` of :data:`PACKAGE_LOGOS` (cached)."""
    module, rel = PACKAGE_LOGOS[name]
    path = _package_file(module, rel)
    if path is None:
        raise FileNotFoundError(f"logo {name}: {module}/{rel} is not installed")
    return prepare_logo(path)
