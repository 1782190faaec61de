"""Colour and compositing: pick colours that keep a mark visible (up to a floor), then blend it onto the photo."""

from __future__ import annotations

import colorsys
import random
from collections.abc import Sequence

from PIL import Image, ImageChops, ImageStat

from train.synth.info import Mark, Style

# opacity * |luminance(mark) - luminance(background)| / 255 must reach this, so a mark
# is faint at worst but never invisible (about 18 grey levels on average).
MIN_VISIBILITY = 0.07
# Faint marks (train.synth.style.FAINT_PROB of the non-stamp marks, opacity FAINT_OPACITY)
# only need about 11 grey levels: hard to see, but there.
FAINT_MIN_VISIBILITY = 0.045


def luma(rgb: Sequence[int]) -> float:
    """Luminance (ITU-R BT.601) of an RGB colour, 0..255."""
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def base_color(rng: random.Random, mode: str) -> tuple[int, int, int]:
    """A colour of ``mode``: ``white``, ``black``, ``grey`` or ``random`` (saturated hue)."""
    if mode == "white":
        v = rng.randint(235, 255)
        return (v, v, v)
    if mode == "black":
        v = rng.randint(0, 30)
        return (v, v, v)
    if mode == "grey":
        v = rng.randint(90, 200)
        return (v, v, v)
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0))
    return (round(r * 255), round(g * 255), round(b * 255))


def scaled_mask(mask: Image.Image, factor: float) -> Image.Image:
    """``mask`` with every value multiplied by ``factor`` (clamped to 0..1)."""
    factor = min(1.0, max(0.0, factor))
    return mask.point([round(v * factor) for v in range(256)])


def color_layer(size: tuple[int, int], color: tuple[int, int, int], alpha: Image.Image) -> Image.Image:
    """Full-size RGBA layer of one colour with ``alpha`` as its alpha channel."""
    layer = Image.new("RGBA", size, (*color, 0))
    layer.putalpha(alpha)
    return layer


def _median_contrast(gray: Image.Image, where: Image.Image, color: tuple[int, int, int]) -> float:
    """Median |luminance(color) - luminance(photo)| over the pixels of ``where``."""
    diff = ImageChops.difference(gray, Image.new("L", gray.size, round(luma(color))))
    return float(ImageStat.Stat(diff, mask=where).median[0])


def _floor(style: Style) -> tuple[float, float]:
    """(visibility floor, highest opacity the floor may push to)."""
    return (FAINT_MIN_VISIBILITY, 0.35) if style.faint else (MIN_VISIBILITY, 0.9)


def _compose_logo(
    image: Image.Image, mark: Mark, rng: random.Random
) -> tuple[Image.Image, tuple[int, int, int], float]:
    """Logo marks: recolour to one colour when its own colours do not show, then composite."""
    style = mark.style
    assert mark.rgba is not None
    size = image.size
    opacity = style.opacity
    floor, cap = _floor(style)
    where = mark.fill.point([255 if v > 127 else 0 for v in range(256)])
    gray = image.convert("L")
    logo = mark.rgba
    color: tuple[int, int, int] | None = None
    if where.getbbox() is not None:
        best = max(((255, 255, 255), (0, 0, 0)), key=lambda c: _median_contrast(gray, where, c))
        if mark.mono:
            color = base_color(rng, style.color_mode)
            if _median_contrast(gray, where, color) < 70 and rng.random() < 0.7:
                color = best
        else:
            diff = ImageChops.difference(gray, logo.convert("RGB").convert("L"))
            if float(ImageStat.Stat(diff, mask=where).median[0]) < 30:
                color, mark.mono = best, True  # its colours do not show here: a one-colour version does
        if color is not None:
            logo = color_layer(size, color, logo.getchannel("A"))
        diff = ImageChops.difference(gray, logo.convert("RGB").convert("L"))
        visible = float(ImageStat.Stat(diff, mask=where).median[0])
        if visible < 30 and color is not None:
            color = best
            logo = color_layer(size, color, logo.getchannel("A"))
            visible = _median_contrast(gray, where, color)
        if opacity * visible / 255 < floor:
            opacity = min(cap, floor * 255 / max(visible, 1.0) + 0.02)
            if opacity * visible / 255 < floor and color != best:
                color = best
                logo = color_layer(size, color, logo.getchannel("A"))
                visible = _median_contrast(gray, where, color)
                opacity = min(0.9, max(opacity, floor * 255 / max(visible, 1.0) + 0.02))
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    mean = ImageStat.Stat(logo.convert("RGB"), mask=where).mean if where.getbbox() else [128, 128, 128]
    tone = color if color is not None else tuple(round(v) for v in mean[:3])
    if style.effect == "shadow":
        shadow_color = (0, 0, 0) if luma(tone) > 90 else (255, 255, 255)
        layer.alpha_composite(color_layer(size, shadow_color, scaled_mask(mark.shadow, 0.6)))
    elif style.effect == "outline":
        layer.alpha_composite(color_layer(size, (20, 20, 20) if luma(tone) > 127 else (245, 245, 245), mark.outer))
    layer.alpha_composite(logo)
    layer.putalpha(scaled_mask(layer.getchannel("A"), opacity))
    out = image.convert("RGBA")
    out.alpha_composite(layer)
    return out.convert("RGB"), tone, opacity  # type: ignore[return-value]


def _stroke_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Outline colour of text in ``color``: near black on light text, near white on dark."""
    return (20, 20, 20) if luma(color) > 127 else (245, 245, 245)


def _box_colors(
    image: Image.Image, mark: Mark, rng: random.Random, color: tuple[int, int, int], opacity: float
) -> tuple[tuple[int, int, int], tuple[int, int, int], float]:
    """Stamp: (text colour, box colour, opacity) so that the text contrasts with the box over the photo."""
    assert mark.box is not None
    box_opacity = mark.box_opacity or 0.0
    box_color = (0, 0, 0) if luma(color) > 127 else (255, 255, 255)
    if rng.random() < 0.25:
        box_color = base_color(rng, "random" if luma(color) > 127 else "white")
    under = ImageStat.Stat(image.convert("L"), mask=mark.box).mean[0] if mark.box.getbbox() else 128.0

    def behind(box: tuple[int, int, int]) -> float:
        return box_opacity * luma(box) + (1 - box_opacity) * under

    if abs(luma(color) - behind(box_color)) < 110:
        box_color = max(((0, 0, 0), (255, 255, 255)), key=lambda c: abs(luma(color) - behind(c)))
    if abs(luma(color) - behind(box_color)) < 110:
        color = (255, 255, 255) if behind(box_color) < 128 else (0, 0, 0)
    visible = abs(luma(color) - behind(box_color))
    if opacity * visible < 80:
        opacity = min(1.0, 80 / max(visible, 1.0))
    return color, box_color, opacity


def _text_colors(
    image: Image.Image, mark: Mark, rng: random.Random, color: tuple[int, int, int], opacity: float
) -> tuple[tuple[int, int, int], str, float, tuple[int, int, int]]:
    """Text on the photo: (colour, effect, opacity, outline colour) that keep it above the visibility floor."""
    effect = mark.style.effect
    stroke_color = _stroke_color(color)
    floor, cap = _floor(mark.style)
    where = mark.fill.point([255 if v > 127 else 0 for v in range(256)])
    if where.getbbox() is None:
        return color, effect, opacity, stroke_color
    gray = image.convert("L")
    visible = _median_contrast(gray, where, color)
    best = max(((255, 255, 255), (0, 0, 0)), key=lambda c: _median_contrast(gray, where, c))
    if visible < 70:
        if rng.random() < 0.7 or effect == "shadow":
            color = best  # most sellers pick a colour that shows ...
        elif effect == "none":
            effect = "outline"  # ... or outline a low-contrast one
        stroke_color = _stroke_color(color)
        visible = _median_contrast(gray, where, color)
    if effect == "outline":
        visible = max(visible, 0.6 * _median_contrast(gray, where, stroke_color))
    if visible < 30:
        color = best
        visible = _median_contrast(gray, where, color)
    if opacity * visible / 255 < floor:
        opacity = min(cap, floor * 255 / max(visible, 1.0) + 0.02)
        if opacity * visible / 255 < floor and color != best:
            color = best  # too faint even at the cap: the colour that shows most
            stroke_color = _stroke_color(color)
            visible = _median_contrast(gray, where, color)
            opacity = min(0.9, max(opacity, floor * 255 / max(visible, 1.0) + 0.02))
    return color, effect, opacity, stroke_color


def compose(image: Image.Image, mark: Mark, rng: random.Random) -> tuple[Image.Image, tuple[int, int, int], float]:
    """Choose colours (keeping the mark visible) and composite; returns (image, colour, opacity).

    Sets ``mark.style.effect`` to the effect actually drawn (a low-contrast text may get an outline).
    """
    if mark.rgba is not None:
        return _compose_logo(image, mark, rng)
    style = mark.style
    color = base_color(rng, style.color_mode)
    effect = style.effect
    opacity = style.opacity
    stroke_color = _stroke_color(color)
    box_color = (0, 0, 0)
    if mark.box is not None:  # the box separates text from photo: contrast with box + photo
        color, box_color, opacity = _box_colors(image, mark, rng, color, opacity)
    else:
        color, effect, opacity, stroke_color = _text_colors(image, mark, rng, color, opacity)

    size = image.size
    text_layer = Image.new("RGBA", size, (*color, 0))
    if effect == "shadow":
        shadow_color = (0, 0, 0) if luma(color) > 90 else (255, 255, 255)
        text_layer.alpha_composite(color_layer(size, shadow_color, scaled_mask(mark.shadow, 0.75)))
    if effect == "outline":
        text_layer.alpha_composite(color_layer(size, stroke_color, mark.outer))
    text_layer.alpha_composite(color_layer(size, color, mark.fill))
    text_layer.putalpha(scaled_mask(text_layer.getchannel("A"), opacity))

    out = image.convert("RGBA")
    if mark.box is not None:
        out.alpha_composite(color_layer(size, box_color, scaled_mask(mark.box, mark.box_opacity or 0.0)))
    out.alpha_composite(text_layer)
    style.effect = effect
    return out.convert("RGB"), color, opacity
