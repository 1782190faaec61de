"""Watermark style families: each renders the geometry of one mark (masks, or an RGBA logo).

``corner_text``, ``center_text``, ``random_text``; ``tiled_text`` (a full grid of repeated
text); ``diagonal_tiled`` (one to three sparse rows of repeated text across the photo,
usually diagonal); ``stamp`` (text on a box or a banner strip); ``logo`` (drawn by
:mod:`train.synth.badges`); ``icon_handle`` (a social-network glyph followed by a handle,
phone number, URL or e-mail; one or two rows). :data:`FAMILY_RENDERERS` maps each name to
its renderer; colour, opacity and compositing come afterwards (:mod:`train.synth.compose`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from PIL import Image, ImageDraw, ImageFont

from train.synth.badges import family_logo
from train.synth.fonts import MIN_FONT_PX, load_font, raqm_available
from train.synth.geometry import masks_from_fill, place_masks, plain_mask, text_masks, tile_masks
from train.synth.icons import ICON_KINDS, icon_source
from train.synth.info import Mark, RenderContext
from train.synth.placements import PLACEMENT_RULES, band_angle, placement_table, position_masks
from train.synth.splits import ICON_SPLIT
from train.synth.style import FAMILY_SIZE, KIND_WEIGHTS, pick_text, sample_style, weighted


def _single_text(family: str) -> Callable[[Image.Image, random.Random, RenderContext], Mark]:
    """Renderer of a family that draws one text block at a named placement."""

    def render(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
        style, font = sample_style(rng, family, image.width, ctx.split)
        placement = weighted(rng, placement_table(family, ctx.split))
        (fill, outer, shadow), angle = position_masks(rng, placement, image.size, text_masks(style.text, font, style))
        return Mark(style, fill, outer, shadow, angle, placement=placement)

    render.__name__ = f"_family_{family}"
    return render


_family_corner_text = _single_text("corner_text")
_family_center_text = _single_text("center_text")
_family_random_text = _single_text("random_text")


def _family_tiled_text(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
    """A full grid of the same text repeated over the photo (no shadow)."""
    style, font = sample_style(rng, "tiled_text", image.width, ctx.split)
    if style.effect == "shadow":
        style.effect = "none"
    placement = weighted(rng, placement_table("tiled_text", ctx.split))
    angle = band_angle(rng, PLACEMENT_RULES[placement][1])
    tile = text_masks(style.text, font, style)
    tile_w, tile_h = tile[0].size
    step_x = tile_w + max(4, round(rng.uniform(0.3, 1.2) * tile_w))
    step_y = tile_h + max(4, round(rng.uniform(0.8, 3.0) * tile_h))
    stagger = rng.choice((0.0, 0.5))
    fill, outer, shadow = tile_masks(tile, image.size, angle, None, step_x, step_y, stagger, rng)
    return Mark(style, fill, outer, shadow, angle, placement=placement)


def _family_diagonal_tiled(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
    """One to three sparse rows of the same text repeated across the whole photo."""
    style, font = sample_style(rng, "diagonal_tiled", image.width, ctx.split)
    placement = weighted(rng, placement_table("diagonal_tiled", ctx.split))
    angle = band_angle(rng, PLACEMENT_RULES[placement][1])
    tile = text_masks(style.text, font, style)
    tile_w, tile_h = tile[0].size
    diagonal = math.hypot(*image.size)
    count = weighted(rng, {"1": 0.35, "2": 0.35, "3": 0.3})
    n_rows = int(count)
    spacing = diagonal / (n_rows + rng.uniform(0.2, 0.8))
    rows = [round((k - (n_rows - 1) / 2) * spacing + rng.uniform(-0.05, 0.05) * diagonal) for k in range(n_rows)]
    step_x = tile_w + max(4, round(rng.uniform(0.5, 2.0) * style.size))
    fill, outer, shadow = tile_masks(tile, image.size, angle, rows, step_x, 1, rng.choice((0.0, 0.5)), rng)
    return Mark(style, fill, outer, shadow, angle, placement=placement)


def _family_stamp(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
    """Text on a rounded box at a placement, or on a banner strip across the width."""
    style, font = sample_style(rng, "stamp", image.width, ctx.split)
    if style.effect == "outline":
        style.effect = "none"  # a box already separates the text from the photo
    fill, outer, shadow = text_masks(style.text, font, style)
    pad_x = max(2, round(style.size * rng.uniform(0.3, 0.8)))
    pad_y = max(2, round(style.size * rng.uniform(0.15, 0.45)))
    text_w, text_h = fill.size
    placement = weighted(rng, placement_table("stamp", ctx.split))
    if not placement.startswith("banner_"):  # rounded box around the text
        box_size = (text_w + 2 * pad_x, text_h + 2 * pad_y)
        radius = round(rng.uniform(0.0, 0.5) * box_size[1])
        box = Image.new("L", box_size)
        ImageDraw.Draw(box).rounded_rectangle((0, 0, box_size[0] - 1, box_size[1] - 1), radius=radius, fill=255)
        masks = [box] + place_masks((fill, outer, shadow), box_size, (pad_x, pad_y))
        (box, fill, outer, shadow), angle = position_masks(rng, placement, image.size, masks)
    else:  # banner strip across the whole width
        angle = 0.0
        band_h = text_h + 2 * pad_y
        if placement == "banner_top":
            top = round(rng.uniform(0.0, 0.1) * image.height) if rng.random() < 0.3 else 0
        elif placement == "banner_bottom":
            top = image.height - band_h - (round(rng.uniform(0.0, 0.1) * image.height) if rng.random() < 0.3 else 0)
        else:  # banner_middle
            top = (image.height - band_h) // 2 + round(rng.uniform(-0.12, 0.12) * image.height)
        box = Image.new("L", image.size)
        ImageDraw.Draw(box).rectangle((0, top, image.width, top + band_h - 1), fill=255)
        align = rng.choice(("center", "center", "left", "right"))
        x = {"center": (image.width - text_w) // 2, "left": pad_x, "right": image.width - text_w - pad_x}[align]
        fill, outer, shadow = place_masks((fill, outer, shadow), image.size, (x, top + pad_y))
    return Mark(style, fill, outer, shadow, angle, box=box, box_opacity=rng.uniform(0.25, 0.6), placement=placement)


def _family_icon_handle(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
    """One or two rows of an icon followed by a handle, phone, URL or e-mail."""
    source, icon_font, glyphs = icon_source()
    names = [n for n in glyphs if ctx.split in ("any", ICON_SPLIT[n])]
    n_rows = 2 if len(names) >= 2 and rng.random() < 0.3 else 1
    icons: list[str | None] = list(rng.sample(names, n_rows)) if names else [None] * n_rows
    kinds = [rng.choice(ICON_KINDS[i]) if i else weighted(rng, KIND_WEIGHTS["icon_handle"]) for i in icons]
    style, font = sample_style(rng, "icon_handle", image.width, ctx.split, kind=kinds[0])
    raqm = raqm_available()
    rows: list[tuple[str | None, str, ImageFont.FreeTypeFont | ImageFont.ImageFont, str]] = [
        (icons[0], style.text, font, style.script)
    ]
    for icon, kind in zip(icons[1:], kinds[1:]):
        _, text, script, path = pick_text(rng, "icon_handle", ctx.split, kind)
        rows.append((icon, text, load_font(path, style.size, raqm), script))
    row_masks = []
    for icon, text, row_font, script in rows:
        text_mask = plain_mask(text, row_font)
        if icon is None or not icon_font:
            row_masks.append((text_mask, script))
            continue
        glyph = plain_mask(glyphs[icon], load_font(icon_font, max(MIN_FONT_PX, round(style.size * 1.1)), False))
        gap = max(2, round(style.size * rng.uniform(0.25, 0.5)))
        height = max(glyph.height, text_mask.height)
        row = Image.new("L", (glyph.width + gap + text_mask.width, height))
        glyph_x, text_x = (0, glyph.width + gap) if script == "latin" else (text_mask.width + gap, 0)
        row.paste(glyph, (glyph_x, (height - glyph.height) // 2))
        row.paste(text_mask, (text_x, (height - text_mask.height) // 2))
        row_masks.append((row, script))
    line_gap = max(2, round(style.size * 0.35))
    width = max(m.width for m, _ in row_masks)
    height = sum(m.height for m, _ in row_masks) + line_gap * (len(row_masks) - 1)
    block = Image.new("L", (width, height))
    y = 0
    for mask, script in row_masks:
        block.paste(mask, (0 if script == "latin" else width - mask.width, y))
        y += mask.height + line_gap
    limit = FAMILY_SIZE["icon_handle"][2] * image.width
    if block.width > limit:
        factor = limit / block.width
        block = block.resize((max(1, round(block.width * factor)), max(1, round(block.height * factor))),
                             Image.Resampling.LANCZOS)  # fmt: skip
        style.size = max(MIN_FONT_PX, round(style.size * factor))
    style.text = "\n".join(text for _, text, _, _ in rows)
    if any(script == "persian" for *_, script in rows):
        style.script = "persian"
    placement = weighted(rng, placement_table("icon_handle", ctx.split))
    (fill, outer, shadow), angle = position_masks(rng, placement, image.size, masks_from_fill(block, style))
    icon_names = ",".join(i for i in icons if i) or None
    return Mark(style, fill, outer, shadow, angle, placement=placement, icon=icon_names)


FAMILY_RENDERERS: dict[str, Callable[[Image.Image, random.Random, RenderContext], Mark]] = {
    "corner_text": _family_corner_text,
    "center_text": _family_center_text,
    "tiled_text": _family_tiled_text,
    "stamp": _family_stamp,
    "random_text": _family_random_text,
    "diagonal_tiled": _family_diagonal_tiled,
    "logo": family_logo,
    "icon_handle": _family_icon_handle,
}
STYLE_FAMILIES: tuple[str, ...] = tuple(FAMILY_RENDERERS)
# Relative frequency of each family when several are allowed (roughly as in real uploads).
FAMILY_WEIGHTS: dict[str, float] = {
    "corner_text": 0.22,
    "center_text": 0.14,
    "tiled_text": 0.1,
    "stamp": 0.1,
    "random_text": 0.12,
    "diagonal_tiled": 0.08,
    "logo": 0.14,
    "icon_handle": 0.1,
}
