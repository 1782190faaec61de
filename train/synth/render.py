"""Public entry points of the watermark renderer: :func:`render_watermark`, :func:`jpeg_roundtrip`, :func:`style_pools`.

A watermark is drawn in three steps: a style family (:mod:`train.synth.families`,
:data:`~train.synth.families.FAMILY_WEIGHTS`) renders the geometry of the mark for the
requested style pool (:mod:`train.synth.splits`), :func:`train.synth.compose.compose`
picks colours that keep it visible and composites it, and an optional JPEG re-encode
follows.
"""

from __future__ import annotations

import io
import os
import random
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageChops

from train.synth.compose import compose
from train.synth.families import FAMILY_RENDERERS, FAMILY_WEIGHTS, STYLE_FAMILIES
from train.synth.fonts import font_partition, font_pool
from train.synth.icons import icon_pool, icon_source
from train.synth.info import RenderContext, WatermarkInfo
from train.synth.logos import logo_pool, prepare_logo
from train.synth.placements import placement_pool
from train.synth.splits import check_split
from train.synth.text import SCRIPTS

DEFAULT_JPEG_PROB = 0.5
JPEG_QUALITY_RANGE = (70, 95)


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode ``image`` as JPEG at ``quality`` and decode it again (as an upload would).

    Args:
        image: any Pillow image; it is converted to RGB.
        quality: JPEG quality, 1..100.

    Returns:
        A new RGB image of the same size.

    Raises:
        ValueError: ``quality`` outside 1..100.
    """
    if not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"quality={quality!r}: allowed is an integer in 1..100")
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def _check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    """The allowed families as a tuple; ValueError for an empty list or an unknown name."""
    if families is None:
        return STYLE_FAMILIES
    chosen = (families,) if isinstance(families, str) else tuple(families)
    if not chosen:
        raise ValueError(f"families is empty: allowed are {', '.join(STYLE_FAMILIES)}")
    unknown = [f for f in chosen if f not in FAMILY_RENDERERS]
    if unknown:
        raise ValueError(f"unknown watermark style family {unknown[0]!r}: allowed are {', '.join(STYLE_FAMILIES)}")
    return chosen


def _user_logos(
    logos: Sequence[Image.Image | str | os.PathLike] | Image.Image | str | os.PathLike | None,
) -> RenderContext:
    """A render context holding the caller's logos, prepared (see :func:`prepare_logo`)."""
    if logos is None:
        return RenderContext(split="any")
    items = [logos] if isinstance(logos, (Image.Image, str, os.PathLike)) else list(logos)
    prepared, names = [], []
    for index, item in enumerate(items):
        prepared.append(prepare_logo(item))
        names.append(Path(item).stem if isinstance(item, (str, os.PathLike)) else str(index))
    return RenderContext(split="any", logos=tuple(prepared), logo_names=tuple(names))


def render_watermark(
    image: Image.Image,
    rng: random.Random,
    *,
    families: Sequence[str] | None = None,
    jpeg_prob: float = DEFAULT_JPEG_PROB,
    split: str = "any",
    logos: Sequence[Image.Image | str | os.PathLike] | Image.Image | str | os.PathLike | None = None,
) -> tuple[Image.Image, WatermarkInfo]:
    """Draw one synthetic watermark onto a copy of ``image``.

    Args:
        image: the clean photo (any mode; it is not modified).
        rng: source of all randomness; the same state gives the same output bytes.
        families: style families to choose from (see :data:`STYLE_FAMILIES`), sampled
            by :data:`FAMILY_WEIGHTS`; None allows all of them.
        jpeg_prob: probability of a final JPEG re-encode at quality 70..95. Pass 0 when
            the caller re-encodes clean and watermarked images alike (so that JPEG
            history cannot tell them apart).
        split: style pool: ``train`` (what training data must use), ``heldout`` (fonts,
            logos, icons and placements never in ``train``) or ``any`` (both; default).
        logos: images (PIL images or files, any mode) for the ``logo`` family instead
            of the built-in pool; opaque ones get their flat backdrop keyed out
            (:func:`prepare_logo`). They are used whatever the split.

    Returns:
        ``(watermarked RGB image of the same size, WatermarkInfo)``.

    Raises:
        ValueError: an unknown or empty family list, an unknown split, ``jpeg_prob``
            outside 0..1, or a fully transparent logo.
    """
    allowed = _check_families(families)
    check_split(split)
    if not 0.0 <= jpeg_prob <= 1.0:
        raise ValueError(f"jpeg_prob={jpeg_prob!r}: allowed is a number in 0..1")
    ctx = _user_logos(logos)
    ctx.split = split
    base = image.convert("RGB")
    if base is image:  # pragma: no cover - convert() always copies, but be explicit
        base = image.copy()
    family = rng.choices(allowed, weights=[FAMILY_WEIGHTS.get(f, 1.0) for f in allowed], k=1)[0]
    mark = FAMILY_RENDERERS[family](base, rng, ctx)
    out, color, opacity = compose(base, mark, rng)
    quality = None
    if rng.random() < jpeg_prob:
        quality = rng.randint(*JPEG_QUALITY_RANGE)
        out = jpeg_roundtrip(out, quality)
    union = mark.fill
    extra = {"outline": mark.outer, "shadow": mark.shadow}.get(mark.style.effect)
    for mask in (extra, mark.box):
        if mask is not None:
            union = ImageChops.lighter(union, mask)
    bbox = union.getbbox() or (0, 0, 0, 0)
    style = mark.style
    if style.font_path:
        font = Path(style.font_path).name
    else:
        font = "pillow-default" if style.text else "none"
    info = WatermarkInfo(
        family=family,
        text=style.text,
        opacity=round(opacity, 4),
        rel_size=round(style.size / base.width, 4),
        kind=style.kind,
        script=style.script,
        font=font,
        color=tuple(int(v) for v in color),  # type: ignore[arg-type]
        effect=style.effect,
        angle=round(float(mark.angle), 2),
        bbox=tuple(int(v) for v in bbox),  # type: ignore[arg-type]
        box_opacity=None if mark.box_opacity is None else round(mark.box_opacity, 4),
        jpeg_quality=quality,
        placement=mark.placement,
        split=split,
        logo=mark.logo,
        icon=mark.icon,
        faint=style.faint,
        rel_width=round((bbox[2] - bbox[0]) / base.width, 4),
    )
    return out, info


def style_pools(split: str) -> dict[str, object]:
    """Everything a style pool holds (fonts per script, logos, icons, placements): for manifests."""
    check_split(split)
    return {
        "fonts": {script: [p.name for p in font_pool(split, script)] for script in SCRIPTS},
        "font_partition": font_partition()[1],
        "logos": logo_pool(split),
        "icons": icon_pool(split),
        "icon_source": icon_source()[0],
        "placements": placement_pool(split),
    }
