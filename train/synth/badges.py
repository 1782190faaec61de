"""The ``logo`` family: procedural badges (shape, ring, initials or a short name), package logos and user logos."""

from __future__ import annotations

import math
import random

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from train.synth.compose import base_color, luma
from train.synth.fonts import font_for
from train.synth.geometry import fit_font, masks_from_fill, paint, plain_mask
from train.synth.info import Mark, RenderContext, Style
from train.synth.logos import logo_pool, package_logo
from train.synth.placements import placement_table, position_masks
from train.synth.style import COLOR_MODES, LOGO_WIDTH, style_opacity, weighted
from train.synth.text import FA_NAMES, FA_SHOP_WORDS, FA_TAGLINES, LATIN_NAMES, LATIN_SHOP_WORDS, is_persian, latin_slug


def _shape_mask(shape: str, size: tuple[int, int]) -> Image.Image:
    """'L' mask of a badge shape filling ``size``."""
    w, h = size
    mask = Image.new("L", size)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse((0, 0, w - 1, h - 1), fill=255)
    elif shape == "rounded_rect":
        draw.rounded_rectangle((0, 0, w - 1, h - 1), radius=round(0.18 * min(w, h)), fill=255)
    elif shape == "shield":
        points = [(0.0, 0.1 * h), (0.5 * w, 0.0), (w - 1.0, 0.1 * h), (w - 1.0, 0.5 * h)]
        for t in np.linspace(0, 1, 12)[1:]:  # quadratic curves down to the point
            points.append(((1 - t) ** 2 * (w - 1) + 2 * t * (1 - t) * (w - 1) + t * t * 0.5 * w,
                           (1 - t) ** 2 * 0.5 * h + 2 * t * (1 - t) * 0.85 * h + t * t * (h - 1)))  # fmt: skip
        for t in np.linspace(0, 1, 12)[1:]:
            points.append(((1 - t) ** 2 * 0.5 * w + t * t * 0.0, (1 - t) ** 2 * (h - 1) + 2 * t * (1 - t) * 0.85 * h
                           + t * t * 0.5 * h))  # fmt: skip
        draw.polygon(points, fill=255)
    elif shape == "hexagon":
        draw.polygon([(0.25 * w, 0), (0.75 * w, 0), (w - 1, h / 2), (0.75 * w, h - 1), (0.25 * w, h - 1), (0, h / 2)],
                     fill=255)  # fmt: skip
    elif shape == "diamond":
        draw.polygon([(w / 2, 0), (w - 1, h / 2), (w / 2, h - 1), (0, h / 2)], fill=255)
    elif shape == "seal":
        n = 28
        points = []
        for k in range(2 * n):
            r = 1.0 if k % 2 == 0 else 0.88
            a = math.pi * k / n
            points.append((w / 2 + r * (w / 2 - 1) * math.cos(a), h / 2 + r * (h / 2 - 1) * math.sin(a)))
        draw.polygon(points, fill=255)
    else:  # pragma: no cover
        raise ValueError(f"unknown badge shape {shape!r}")
    return mask


def _arc_mask(strip: Image.Image, size: tuple[int, int], r_mid: float, start: float) -> Image.Image:
    """Bend a horizontal text strip around a circle centred in ``size`` (clockwise, centred at ``start`` rad)."""
    from scipy import ndimage

    w, h = size
    strip_arr = np.asarray(strip, dtype=np.float32)
    th, tw = strip_arr.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx + 0.5 - w / 2, yy + 0.5 - h / 2
    rho = np.hypot(dx, dy)
    phi = np.arctan2(dx, -dy) - start
    phi = (phi + np.pi) % (2 * np.pi) - np.pi
    u = tw / 2 + phi * r_mid
    v = (r_mid + th / 2) - rho
    out = ndimage.map_coordinates(strip_arr, [v, u], order=1, cval=0.0, mode="constant")
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "L")


def _badge_plate(rng: random.Random, shape: str, size: tuple[int, int]) -> tuple[Image.Image, tuple[int, int, int]]:
    """The badge without lettering (solid, outlined or double-lined shape) and the ink colour of its text."""
    w, h = size
    shape_mask = _shape_mask(shape, size)
    color_a = base_color(rng, weighted(rng, {"random": 0.5, "black": 0.25, "white": 0.25}))
    color_b = (250, 250, 250) if luma(color_a) < 140 else (25, 25, 25)
    layout = weighted(rng, {"solid": 0.5, "outline": 0.3, "double": 0.2})
    design = Image.new("RGBA", size, (0, 0, 0, 0))
    thick = max(2, round(0.06 * min(w, h)))
    if layout == "outline":
        hole = Image.new("L", size)
        hole.paste(_shape_mask(shape, (max(1, w - 2 * thick), max(1, h - 2 * thick))), (thick, thick))
        paint(design, ImageChops.subtract(shape_mask, hole), color_a)
        ink = color_a
    else:
        paint(design, shape_mask, color_a)
        ink = color_b
        if layout == "double":
            inset = max(3, round(0.09 * min(w, h)))
            line = max(1, round(0.018 * min(w, h)))
            outer_in = _shape_mask(shape, (w - 2 * inset, h - 2 * inset))
            inner_in = _shape_mask(shape, (w - 2 * inset - 2 * line, h - 2 * inset - 2 * line))
            ring = Image.new("L", size)
            ring.paste(outer_in, (inset, inset))
            hole = Image.new("L", size)
            hole.paste(inner_in, (inset + line, inset + line))
            paint(design, ImageChops.subtract(ring, hole), color_b)
    return design, ink


def _badge_words(rng: random.Random, shape: str, side: int) -> tuple[str, str, str]:
    """(main, ring text, sub line): initials, a short Persian name or a Latin word, then at most one extra line."""
    roll = rng.random()
    if roll < 0.45:
        name = rng.choice(LATIN_NAMES)
        other = rng.choice(LATIN_NAMES)
        main = rng.choice((name[0].upper(), (name[0] + other[0]).upper(), f"{name[0].upper()}&{other[0].upper()}"))
    elif roll < 0.8:
        main = rng.choice([n for n in FA_NAMES if len(n) <= 6])
    else:
        main = rng.choice(LATIN_NAMES).upper()
    round_shape = shape in ("circle", "seal")
    ring_text = ""
    if round_shape and rng.random() < 0.45 and side >= 96:
        ring_text = rng.choice(
            (
                f"{rng.choice(LATIN_NAMES).upper()} {rng.choice(LATIN_SHOP_WORDS).upper()} \u2022 ONLINE SHOP \u2022",
                f"{rng.choice(FA_SHOP_WORDS)} {rng.choice(FA_NAMES)} \u2022 {rng.choice(FA_TAGLINES)}",
                f"@{latin_slug(rng).upper()} \u2022 EST. {rng.randint(1390, 1403)}",
            )
        )
    sub = ""
    if not ring_text and rng.random() < 0.4:
        sub = rng.choice(("SHOP", "GALLERY", "STORE", "EST. 1399", "فروشگاه", "گالری", "ONLINE"))
    return main, ring_text, sub


def _letter_badge(
    rng: random.Random,
    design: Image.Image,
    shape: str,
    split: str,
    ink: tuple[int, int, int],
    words: tuple[str, str, str],
) -> tuple[list[str], str]:
    """Draw the main word, then the sub line or the ring text, in fonts of the pool; returns (texts, main font path).

    A Persian main word that no font of the pool draws is replaced by Latin initials; the
    returned texts still start with the sampled word (as the renderer always reported it).
    """
    main, ring_text, sub = words
    w, h = design.size
    texts = [main]
    main_font = font_for(rng, main, split)
    if is_persian(main) and not main_font:  # no usable Persian font in this pool
        main = rng.choice(LATIN_NAMES)[:2].upper()
        main_font = font_for(rng, main, split)
    scale = 0.55 if ring_text else 0.62
    box_w, box_h = scale * w, (0.3 if sub else 0.4) * h
    if shape == "diamond":
        box_w, box_h = box_w * 0.75, box_h * 0.8
    main_mask = plain_mask(main, fit_font(main, main_font, box_w, box_h))
    centre_y = h * (0.45 if shape == "shield" else 0.5)
    if sub:
        sub_font_path = font_for(rng, sub, split)
        if sub_font_path or not is_persian(sub):
            sub_mask = plain_mask(sub, fit_font(sub, sub_font_path, 0.5 * w, 0.12 * h))
            gap = round(0.04 * h)
            total = main_mask.height + gap + sub_mask.height
            top = round(centre_y - total / 2)
            paint(design, main_mask, ink, ((w - main_mask.width) // 2, top))
            paint(design, sub_mask, ink, ((w - sub_mask.width) // 2, top + main_mask.height + gap))
            texts.append(sub)
        else:
            sub = ""
    if not sub:
        paint(design, main_mask, ink, ((w - main_mask.width) // 2, round(centre_y - main_mask.height / 2)))
    if ring_text:
        ring_font_path = font_for(rng, ring_text, split)
        if ring_font_path or not is_persian(ring_text):
            r_out = 0.5 * min(w, h) * (0.84 if shape == "seal" else 0.92)
            band = 0.13 * min(w, h)
            r_mid = r_out - band / 2
            font = fit_font(ring_text, ring_font_path, 2 * math.pi * r_mid * 0.92, band * 0.8)
            paint(design, _arc_mask(plain_mask(ring_text, font), design.size, r_mid, 0.0), ink)
            texts.append(ring_text)
    return texts, main_font


def _badge(rng: random.Random, shape: str, split: str, width_px: int) -> tuple[Image.Image, str, str, str]:
    """Procedural badge logo: (RGBA image, text, script, font path)."""
    s = max(64, 2 * width_px)  # drawn at twice the size, then reduced
    ratio = {"circle": 1.0, "rounded_rect": rng.choice((1.0, 1.5, 2.0)), "shield": 0.85, "hexagon": 1.15,
             "diamond": 1.0, "seal": 1.0}[shape]  # fmt: skip
    size = (s, round(s / ratio)) if ratio >= 1 else (round(s * ratio), s)
    w, h = size
    design, ink = _badge_plate(rng, shape, size)
    texts, main_font = _letter_badge(rng, design, shape, split, ink, _badge_words(rng, shape, s))
    target = (max(4, width_px), max(4, round(width_px * h / w)))
    script = "persian" if any(is_persian(t) for t in texts) else "latin"
    return design.resize(target, Image.Resampling.LANCZOS), "\n".join(texts), script, main_font


def _fit_logo(logo: Image.Image, width: int, max_height: int) -> Image.Image:
    """``logo`` scaled to ``width`` pixels, or less when it would be taller than ``max_height``."""
    scale = min(width / logo.width, max_height / logo.height)
    size = (max(4, round(logo.width * scale)), max(4, round(logo.height * scale)))
    return logo.resize(size, Image.Resampling.LANCZOS)


def family_logo(image: Image.Image, rng: random.Random, ctx: RenderContext) -> Mark:
    """The ``logo`` family: a user logo, a package logo (30 %) or a procedural badge of the pool."""
    placement = weighted(rng, placement_table("logo", ctx.split))
    low, high_off, high_centre = LOGO_WIDTH
    high = high_centre if placement.startswith("center") else high_off
    width_px = max(12, round(math.exp(rng.uniform(math.log(low), math.log(high))) * image.width))
    text, script, font_path = "", "none", ""
    if ctx.logos:
        index = rng.randrange(len(ctx.logos))
        logo, name = ctx.logos[index], f"user:{ctx.logo_names[index]}"
    else:
        pool = logo_pool(ctx.split)
        images = [n for n in pool if n.startswith("image:")]
        badges = [n for n in pool if n.startswith("badge:")]
        if images and rng.random() < 0.3:
            name = rng.choice(images)
            logo = package_logo(name.split(":", 1)[1])
        else:
            name = rng.choice(badges)
            logo, text, script, font_path = _badge(rng, name.split(":", 1)[1], ctx.split, width_px)
    logo = _fit_logo(logo, width_px, round(0.6 * image.height))
    opacity, faint = style_opacity(rng, "logo")
    stroke = max(1, round(0.02 * logo.width))
    shift = max(1, round(0.03 * logo.width))
    style = Style(
        text=text,
        kind="logo",
        script=script,
        font_path=font_path,
        size=logo.width,
        opacity=opacity,
        color_mode=weighted(rng, COLOR_MODES),
        effect=weighted(rng, {"none": 0.7, "shadow": 0.2, "outline": 0.1}),
        stroke=stroke,
        shadow_offset=(shift * rng.choice((1, 1, -1)), shift),
        faint=faint,
    )
    mono = rng.random() < 0.45
    (placed,), angle = position_masks(rng, placement, image.size, [logo])
    fill = placed.getchannel("A")
    _, outer, shadow = masks_from_fill(fill, style)
    pad = (outer.width - fill.width) // 2
    outer = outer.crop((pad, pad, pad + fill.width, pad + fill.height))
    shadow = shadow.crop((pad, pad, pad + fill.width, pad + fill.height))
    return Mark(style, fill, outer, shadow, angle, placement=placement, rgba=placed, mono=mono, logo=name)
