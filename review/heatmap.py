"""The explanation of a verdict: checked at the edge, drawn as a semi-transparent PNG.

TorchServe's ``/explanations`` answer carries ``explanation = {"kind", "rows", "cols",
"grid", "image": {"width", "height"}, "peak", "box"}``: a ``rows x cols`` grid of evidence
in [0, 1] over the photo (row 0 at the top). :func:`parse_explanation` keeps a valid one
(values clipped to [0, 1]) and says why it drops any other; :func:`render_png` upsamples
the grid bilinearly to the size the page shows the photo at, maps it through a colour
scale (transparent blue for no evidence, opaque yellow-red for the most) and outlines
the strongest region.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

MAX_GRID = 256
MIN_SIDE, MAX_SIDE = 16, 2048
MAX_ALPHA = 0.6
# Colour stops (value, r, g, b): blue -> cyan -> yellow -> red.
STOPS = np.array([
    (0.00, 0, 0, 255),
    (0.35, 0, 220, 255),
    (0.65, 255, 230, 0),
    (1.00, 255, 0, 0),
], dtype=np.float32)


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: not a finite number")
    return float(value)


def parse_explanation(raw: Any) -> dict[str, Any]:
    """A clean copy of TorchServe's explanation object.

    Raises:
        ValueError: the object is not the documented shape (the message says what is wrong).
    """
    if not isinstance(raw, dict):
        raise ValueError("explanation: not an object")
    rows, cols = raw.get("rows"), raw.get("cols")
    if not all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_GRID for n in (rows, cols)):
        raise ValueError(f"explanation: rows and cols must be whole numbers in 1..{MAX_GRID}")
    grid = raw.get("grid")
    if not isinstance(grid, list) or len(grid) != rows or any(not isinstance(r, list) or len(r) != cols for r in grid):
        raise ValueError(f"explanation: grid is not {rows} rows of {cols} values")
    values = [[min(1.0, max(0.0, _number(v, "explanation grid value"))) for v in row] for row in grid]
    image = raw.get("image") or {}
    width, height = (_number(image.get(k), f"explanation image {k}") for k in ("width", "height"))
    if width < 1 or height < 1:
        raise ValueError("explanation: image width and height must be positive")
    clean: dict[str, Any] = {
        "kind": str(raw.get("kind", "")), "rows": rows, "cols": cols, "grid": values,
        "image": {"width": int(width), "height": int(height)},
    }
    box = raw.get("box")
    if isinstance(box, dict):
        try:
            clean["box"] = {k: _number(box.get(k), f"explanation box {k}") for k in ("left", "top", "right", "bottom")}
        except ValueError:
            pass  # the grid is what is drawn; an unusable box is left out
    peak = raw.get("peak")
    if isinstance(peak, dict):
        try:
            clean["peak"] = {k: _number(peak.get(k), f"explanation peak {k}") for k in ("x", "y")}
        except ValueError:
            pass
    return clean


def display_size(explanation: dict[str, Any], width: int | None) -> tuple[int, int]:
    """(width, height) of the overlay: ``width`` clamped to 16..2048 px (default the photo's
    width, at most 1024), height from the photo's aspect ratio."""
    photo_w, photo_h = explanation["image"]["width"], explanation["image"]["height"]
    w = min(photo_w, 1024) if width is None else width
    w = max(MIN_SIDE, min(MAX_SIDE, int(w)))
    h = max(1, min(MAX_SIDE, round(w * photo_h / photo_w)))
    return w, h


def colour_map(values: np.ndarray) -> np.ndarray:
    """RGBA uint8 for values in [0, 1]: colour through :data:`STOPS`, alpha rising with the value."""
    rgb = np.stack([np.interp(values, STOPS[:, 0], STOPS[:, i]) for i in (1, 2, 3)], axis=-1)
    alpha = 255.0 * MAX_ALPHA * np.clip(values, 0.0, 1.0) ** 0.8
    return np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)


def render_png(explanation: dict[str, Any], width: int | None = None) -> bytes:
    """The explanation as a PNG overlay of :func:`display_size` (box outlined when given)."""
    w, h = display_size(explanation, width)
    grid = np.asarray(explanation["grid"], dtype=np.float32)
    upsampled = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.BILINEAR))
    overlay = Image.fromarray(colour_map(upsampled))
    box = explanation.get("box")
    if box:
        sx, sy = w / explanation["image"]["width"], h / explanation["image"]["height"]
        outline = [box["left"] * sx, box["top"] * sy, max(box["left"], box["right"] - 1) * sx,
                   max(box["top"], box["bottom"] - 1) * sy]
        ImageDraw.Draw(overlay).rectangle(outline, outline=(255, 255, 255, 230), width=max(1, w // 200))
    out = io.BytesIO()
    overlay.save(out, format="PNG", optimize=False)
    return out.getvalue()
