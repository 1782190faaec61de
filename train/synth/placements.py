"""Placements: named position rules with an angle band, :func:`placement_pool`, and placing masks by name.

Which family uses which placement in which pool is :data:`train.synth.splits.FAMILY_PLACEMENTS`.
Tiled, row and banner placements are laid out by their families (:mod:`train.synth.families`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from PIL import Image

from train.synth.geometry import place_masks, rotate_masks
from train.synth.splits import FAMILY_PLACEMENTS, HELDOUT_WEIGHT_IN_ANY, check_split
from train.synth.style import weighted

# name: (position rule, angle band)
PLACEMENT_RULES: dict[str, tuple[str, str]] = {
    "corner": ("corner", "upright"),
    "bottom_center": ("bottom_center", "upright"),
    "center_upright": ("center", "upright"),
    "center_diag": ("center", "diag"),
    "random_upright": ("random", "upright"),
    "random_diag": ("random", "diag"),
    "tiled_horizontal": ("tile", "flat"),
    "tiled_diag": ("tile", "diag"),
    "rows_diag": ("rows", "diag"),
    "banner_top": ("banner_top", "flat"),
    "banner_bottom": ("banner_bottom", "flat"),
    "edge_middle": ("edge_middle", "edge"),
    "center_shallow": ("center", "shallow"),
    "center_steep": ("center", "steep"),
    "random_shallow": ("random", "shallow"),
    "random_steep": ("random", "steep"),
    "tiled_shallow": ("tile", "shallow"),
    "tiled_steep": ("tile", "steep"),
    "rows_shallow": ("rows", "shallow"),
    "rows_steep": ("rows", "steep"),
    "banner_middle": ("banner_middle", "flat"),
}
# |angle| ranges in degrees; "upright" is 0 or within +-6, "edge" is 0 or +-90.
_ANGLE_BANDS = {"upright": (0.0, 6.0), "flat": (0.0, 0.0), "diag": (25.0, 40.0), "shallow": (10.0, 22.0),
                "steep": (45.0, 70.0)}  # fmt: skip


def placement_table(family: str, split: str) -> dict[str, float]:
    """Placement weights of ``family`` in ``split`` (``any``: train plus held-out at half weight)."""
    pools = FAMILY_PLACEMENTS[family]
    if split != "any":
        return dict(pools[split])
    table = dict(pools["train"])
    table.update({name: w * HELDOUT_WEIGHT_IN_ANY for name, w in pools["heldout"].items()})
    return table


def placement_pool(split: str = "any", family: str | None = None) -> list[str]:
    """Placement names of one style pool, for one family or all (rules: :mod:`train.synth.splits`)."""
    check_split(split)
    families = [family] if family is not None else list(FAMILY_PLACEMENTS)
    names: list[str] = []
    for fam in families:
        if fam not in FAMILY_PLACEMENTS:
            raise ValueError(f"unknown watermark style family {fam!r}: allowed are {', '.join(FAMILY_PLACEMENTS)}")
        names += [n for n in placement_table(fam, split) if n not in names]
    return names


def _corner_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int], margin: float) -> tuple[int, int]:
    """Top-left of a mark in a weighted corner, ``margin`` (of each side) from the edges."""
    width, height = size
    w, h = mark
    gap_x, gap_y = round(margin * width), round(margin * height)
    corner = weighted(rng, {"br": 0.4, "bl": 0.22, "tr": 0.19, "tl": 0.19})
    x = gap_x if corner[1] == "l" else width - w - gap_x
    y = gap_y if corner[0] == "t" else height - h - gap_y
    return x, y


def _random_xy(rng: random.Random, size: tuple[int, int], mark: tuple[int, int]) -> tuple[int, int]:
    """Top-left of a mark anywhere it fits (or overhangs evenly when it does not)."""
    span_x, span_y = size[0] - mark[0], size[1] - mark[1]
    x = rng.randint(min(0, span_x), max(0, span_x))
    y = rng.randint(min(0, span_y), max(0, span_y))
    return x, y


def band_angle(rng: random.Random, band: str) -> float:
    """A rotation in degrees from an angle band (:data:`_ANGLE_BANDS`), either sign."""
    if band == "flat":
        return 0.0
    if band == "upright":
        return 0.0 if rng.random() < 0.7 else rng.uniform(-6.0, 6.0)
    low, high = _ANGLE_BANDS[band]
    return rng.choice((1.0, -1.0)) * rng.uniform(low, high)


def position_masks(
    rng: random.Random, placement: str, size: tuple[int, int], masks: Sequence[Image.Image]
) -> tuple[list[Image.Image], float]:
    """Rotate and place ``masks`` (same size) by a named placement; returns full-image masks and the angle."""
    rule, band = PLACEMENT_RULES[placement]
    width, height = size
    edge = ""
    if rule == "edge_middle":
        edge = weighted(rng, {"top": 0.4, "left": 0.3, "right": 0.3})
        angle = 0.0 if edge == "top" or rng.random() < 0.35 else (90.0 if edge == "left" else -90.0)
    else:
        angle = band_angle(rng, band)
    masks = rotate_masks(masks, angle)
    w, h = masks[0].size
    margin = rng.uniform(0.0, 0.05)
    gap_x, gap_y = round(margin * width), round(margin * height)
    if rule == "corner":
        xy = _corner_xy(rng, size, (w, h), margin)
    elif rule == "bottom_center":
        xy = ((width - w) // 2 + round(rng.uniform(-0.03, 0.03) * width), height - h - gap_y)
    elif rule == "center":
        jitter_x, jitter_y = (round(rng.uniform(-0.06, 0.06) * d) for d in size)
        xy = ((width - w) // 2 + jitter_x, (height - h) // 2 + jitter_y)
    elif rule == "edge_middle":
        if edge == "top":
            xy = ((width - w) // 2, gap_y)
        elif edge == "left":
            xy = (gap_x, (height - h) // 2)
        else:
            xy = (width - w - gap_x, (height - h) // 2)
    elif rule == "random":
        xy = _random_xy(rng, size, (w, h))
    else:  # pragma: no cover - tiling/banner placements are handled by their families
        raise ValueError(f"placement {placement!r} has no single position")
    return place_masks(masks, size, xy), angle
