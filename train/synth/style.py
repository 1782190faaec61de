"""Style sampling: the weighted-choice helper, text + font choice and the size/opacity/colour/effect of a text mark."""

from __future__ import annotations

import math
import random
import warnings

from PIL import ImageFont

from train.synth.fonts import MIN_FONT_PX, draws, font_pool, latin_font, load_font, persian_unusable, raqm_available
from train.synth.geometry import text_bbox
from train.synth.info import Style
from train.synth.text import LATIN_ONLY_KINDS, LATIN_STAND_IN, TEXT_KINDS, is_persian, make_text

# Faint marks (FAINT_PROB of the non-stamp marks, opacity FAINT_OPACITY) have a lower
# visibility floor (train.synth.compose.FAINT_MIN_VISIBILITY): hard to see, but there.
FAINT_PROB = 0.2
FAINT_OPACITY = (0.08, 0.2)

# Relative font size (of the width), maximal text width (of the width).
FAMILY_SIZE = {
    "corner_text": (0.02, 0.07, 0.6),
    "center_text": (0.06, 0.16, 0.9),
    "tiled_text": (0.025, 0.07, 0.6),
    "diagonal_tiled": (0.035, 0.09, 0.6),
    "stamp": (0.03, 0.08, 0.75),
    "random_text": (0.025, 0.12, 0.8),
    "icon_handle": (0.022, 0.07, 0.7),
}
_OPACITY = {
    "corner_text": (0.25, 0.75),
    "center_text": (0.15, 0.5),
    "tiled_text": (0.12, 0.35),
    "diagonal_tiled": (0.12, 0.4),
    "stamp": (0.5, 0.8),
    "random_text": (0.2, 0.7),
    "icon_handle": (0.3, 0.8),
    "logo": (0.2, 0.7),
}
_NO_FAINT = frozenset({"stamp"})  # the box is what shows
LOGO_WIDTH = (0.05, 0.3, 0.6)  # log-uniform logo width (of the image width): min, max off-centre, max centred
KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "corner_text": {
        "handle": 3, "mixed_handle": 1, "url": 1.5, "phone_fa": 1, "phone_latin": 1, "persian_shop": 2, "latin_shop": 1,
    },
    "center_text": {"persian_shop": 3, "latin_shop": 2, "handle": 2.5, "url": 1, "two_line": 1.5, "mixed_handle": 0.5},
    "tiled_text": {"handle": 3.5, "url": 2, "persian_shop": 2, "latin_shop": 1.5, "phone_latin": 0.5, "phone_fa": 0.5},
    "diagonal_tiled": {"handle": 3, "url": 2, "persian_shop": 2, "latin_shop": 1.5, "phone_latin": 1, "phone_fa": 1},
    "stamp": {"two_line": 3.5, "persian_shop": 2, "handle": 2, "phone_fa": 1, "phone_latin": 0.5, "url": 1},
    "random_text": {kind: 1.0 for kind in TEXT_KINDS},
    "icon_handle": {"handle": 3, "phone_latin": 1.5, "phone_fa": 1.5, "url": 1, "email": 0.5},
    "logo": {"persian_shop": 1, "latin_shop": 1},
}  # fmt: skip
COLOR_MODES = {"white": 0.4, "black": 0.25, "grey": 0.15, "random": 0.2}
_EFFECTS = {"none": 0.55, "outline": 0.25, "shadow": 0.2}
_TEXT_TRIES = 8


def weighted(rng: random.Random, table: dict[str, float]) -> str:
    """One key of ``table``, drawn with its value as weight."""
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys], k=1)[0]


def pick_text(
    rng: random.Random, family: str, split: str = "any", kind: str | None = None
) -> tuple[str, str, str, str]:
    """Return (kind, text, script, font_path) with a font of the pool able to draw the text."""
    for _ in range(_TEXT_TRIES):
        chosen = kind or weighted(rng, KIND_WEIGHTS[family])
        text = make_text(chosen, rng)
        if is_persian(text):
            reason = persian_unusable(split)
            if reason:
                warnings.warn(f"{reason}; drawing a Latin watermark instead", RuntimeWarning, stacklevel=3)
                chosen = LATIN_STAND_IN.get(chosen) or rng.choice(LATIN_ONLY_KINDS)
                text = make_text(chosen, rng)
            else:
                usable = [f for f in font_pool(split, "persian") if draws(f, text)]
                if usable:
                    return chosen, text, "persian", str(rng.choice(usable))
                continue  # e.g. a Latin handle inside and no font of the pool has both
        font = latin_font(rng, text, split)
        if font is not None:
            return chosen, text, "latin", font
    chosen = rng.choice(LATIN_ONLY_KINDS)
    text = make_text(chosen, rng)
    font = latin_font(rng, text, split)
    return chosen, text, "latin", font or ""


def style_opacity(rng: random.Random, family: str) -> tuple[float, bool]:
    """(opacity, faint): a fifth of the marks (not stamps) are faint."""
    faint = family not in _NO_FAINT and rng.random() < FAINT_PROB
    return (rng.uniform(*FAINT_OPACITY) if faint else rng.uniform(*_OPACITY[family])), faint


def sample_style(
    rng: random.Random, family: str, width: int, split: str = "any", kind: str | None = None
) -> tuple[Style, ImageFont.FreeTypeFont]:
    """Text, font and look of one text mark of ``family``; the font is sized to fit the width."""
    kind, text, script, font_path = pick_text(rng, family, split, kind)
    low, high, max_width = FAMILY_SIZE[family]
    rel = math.exp(rng.uniform(math.log(low), math.log(high)))
    size = max(MIN_FONT_PX, round(rel * width))
    raqm = raqm_available()
    font = load_font(font_path, size, raqm)
    left, _, right, _ = text_bbox(text, font, 0)
    text_w = right - left
    if text_w > max_width * width:
        size = max(MIN_FONT_PX, int(size * max_width * width / text_w))
        font = load_font(font_path, size, raqm)
    effect = weighted(rng, _EFFECTS)
    stroke = max(1, round(size * rng.uniform(0.05, 0.1)))
    shift = max(1, round(size * rng.uniform(0.04, 0.09)))
    shadow_offset = (shift * rng.choice((1, 1, -1)), shift)
    opacity, faint = style_opacity(rng, family)
    style = Style(
        text=text,
        kind=kind,
        script=script,
        font_path=font_path,
        size=size,
        opacity=opacity,
        color_mode=weighted(rng, COLOR_MODES),
        effect=effect,
        stroke=stroke,
        shadow_offset=shadow_offset,
        faint=faint,
    )
    return style, font
