"""Mask geometry: text masks and font fitting, outline/shadow padding, rotate, place, tile, paint through a mask."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from train.synth.fonts import MIN_FONT_PX, load_font, raqm_available
from train.synth.info import Style


def text_bbox(text: str, font: ImageFont.FreeTypeFont, stroke: int) -> tuple[int, int, int, int]:
    """Bounding box of (multi-line, centred) ``text`` drawn at the origin with ``stroke``."""
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    box = probe.multiline_textbbox((0, 0), text, font=font, stroke_width=stroke, align="center")
    return tuple(int(round(v)) for v in box)  # type: ignore[return-value]


def text_masks(text: str, font: ImageFont.FreeTypeFont, style: Style) -> tuple[Image.Image, Image.Image, Image.Image]:
    """Tight (fill, outer, shadow) masks of one text block, all the same size."""
    left, top, right, bottom = text_bbox(text, font, style.stroke)
    dx, dy = style.shadow_offset
    blur = max(0.0, style.size / 30)
    pad = style.stroke + max(abs(dx), abs(dy)) + int(3 * blur) + 2
    size = (right - left + 2 * pad, bottom - top + 2 * pad)
    origin = (pad - left, pad - top)
    fill, outer, shadow = (Image.new("L", size) for _ in range(3))
    ImageDraw.Draw(fill).multiline_text(origin, text, font=font, fill=255, align="center")
    ImageDraw.Draw(outer).multiline_text(
        origin, text, font=font, fill=255, align="center", stroke_width=style.stroke, stroke_fill=255
    )
    ImageDraw.Draw(shadow).multiline_text((origin[0] + dx, origin[1] + dy), text, font=font, fill=255, align="center")
    if blur >= 0.5:
        shadow = shadow.filter(ImageFilter.GaussianBlur(blur))
    return fill, outer, shadow


def plain_mask(text: str, font: ImageFont.FreeTypeFont, align: str = "center") -> Image.Image:
    """Tight 'L' mask of ``text`` (at least 1x1)."""
    left, top, right, bottom = text_bbox(text, font, 0)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)))
    ImageDraw.Draw(mask).multiline_text((-left, -top), text, font=font, fill=255, align=align)
    return mask


def masks_from_fill(fill: Image.Image, style: Style) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(fill, outer, shadow) of a tight fill mask, padded like :func:`text_masks`."""
    dx, dy = style.shadow_offset
    blur = max(0.0, style.size / 30)
    pad = style.stroke + max(abs(dx), abs(dy)) + int(3 * blur) + 2
    size = (fill.width + 2 * pad, fill.height + 2 * pad)
    padded = Image.new("L", size)
    padded.paste(fill, (pad, pad))
    outer = padded.filter(ImageFilter.MaxFilter(2 * min(style.stroke, 6) + 1))
    shadow = Image.new("L", size)
    shadow.paste(fill, (pad + dx, pad + dy))
    if blur >= 0.5:
        shadow = shadow.filter(ImageFilter.GaussianBlur(blur))
    return padded, outer, shadow


def rotate_masks(masks: Sequence[Image.Image], angle: float) -> list[Image.Image]:
    """Masks rotated by ``angle`` degrees (canvas expanded); unchanged below 0.01 deg."""
    if abs(angle) < 0.01:
        return list(masks)
    return [m.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True) for m in masks]


def place_masks(masks: Sequence[Image.Image], size: tuple[int, int], xy: tuple[int, int]) -> list[Image.Image]:
    """Each mask pasted at ``xy`` on an empty canvas of ``size``."""
    placed = []
    for mask in masks:
        canvas = Image.new(mask.mode, size)
        canvas.paste(mask, xy)
        placed.append(canvas)
    return placed


def tile_masks(
    tile: Sequence[Image.Image],
    size: tuple[int, int],
    angle: float,
    rows: Sequence[int] | None,
    step_x: int,
    step_y: int,
    stagger: float,
    rng: random.Random,
) -> list[Image.Image]:
    """Repeat ``tile`` masks on a grid (``rows`` None) or along given row offsets, rotate, crop to ``size``."""
    tile_w, tile_h = tile[0].size
    side = int(math.hypot(*size)) + 2 * max(tile_w, tile_h)
    phase_x = rng.randrange(step_x)
    if rows is None:
        phase_y = rng.randrange(step_y)
        ys = list(range(-phase_y, side, step_y))
    else:
        ys = [side // 2 + offset - tile_h // 2 for offset in rows]
    canvases = [Image.new("L", (side, side)) for _ in tile]
    for row, y in enumerate(ys):
        offset = round(stagger * step_x * (row % 2))
        for x in range(-phase_x - offset, side, step_x):
            for canvas, mask in zip(canvases, tile):
                canvas.paste(mask, (x, y))
    if abs(angle) >= 0.01:
        canvases = [c.rotate(angle, resample=Image.Resampling.BICUBIC) for c in canvases]
    left, top = (side - size[0]) // 2, (side - size[1]) // 2
    return [c.crop((left, top, left + size[0], top + size[1])) for c in canvases]


def paint(design: Image.Image, mask: Image.Image, color: tuple[int, int, int], xy: tuple[int, int] = (0, 0)) -> None:
    """Alpha-composite ``color`` through ``mask`` onto RGBA ``design`` at ``xy`` (clipped)."""
    x, y = xy
    left, top = max(0, -x), max(0, -y)
    right, bottom = min(mask.width, design.width - x), min(mask.height, design.height - y)
    if right <= left or bottom <= top:
        return
    part = mask.crop((left, top, right, bottom))
    layer = Image.new("RGBA", part.size, (*color, 0))
    layer.putalpha(part)
    design.alpha_composite(layer, dest=(x + left, y + top))


def fit_font(text: str, font_path: str, max_w: float, max_h: float) -> ImageFont.FreeTypeFont:
    """The largest font (>= MIN_FONT_PX) whose rendering of ``text`` fits max_w x max_h."""
    raqm = raqm_available()
    size = max(MIN_FONT_PX, int(max_h))
    for _ in range(3):
        font = load_font(font_path, size, raqm)
        left, top, right, bottom = text_bbox(text, font, 0)
        w, h = max(1, right - left), max(1, bottom - top)
        if w <= max_w and h <= max_h:
            break
        size = max(MIN_FONT_PX, int(size * min(max_w / w, max_h / h) * 0.98))
    return load_font(font_path, size, raqm)
