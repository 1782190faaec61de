"""Where is the watermark: the model's evidence map turned into an answer about the photo.

The exported model's ``explain`` (TorchScript method, or the ONNX output ``evidence``)
gives, with the logits of the same forward pass, a coarse map ``[h, w]`` over the model
input (8 x 8 at 299 px, 14 x 14 at 512 px): each cell's logit contribution (see
``train.model.WatermarkNet.explain``). :func:`summarize` maps it back onto the photo:

* ``grid``: ``rows`` x ``cols`` values in 0..1 (row 0 at the top), the positive evidence
  over the photo divided by its maximum; cell ``(r, c)`` covers ``x`` in
  ``[c W / cols, (c + 1) W / cols)`` and ``y`` in ``[r H / rows, (r + 1) H / rows)``;
* ``peak``: the strongest point of the bilinearly upsampled map, in photo pixels;
* ``box``: the cells of at least half the peak's value connected to it, in photo pixels;
* ``image``: the photo's width and height as shown (EXIF orientation applied).

Imported by the handler (flat inside the ``.mar``) and by the localisation benchmark,
so both read the map the same way. Only torch; nothing happens at import.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

GRID = 16  # rows and columns of the answer's grid
BOX_FRACTION = 0.5  # a cell belongs to the strongest region at this share of the peak value
DIGITS = 3
KIND = "class-activation"


def photo_region(evidence: torch.Tensor, size: int, content: tuple[int, int, int, int]) -> torch.Tensor:
    """The ``[h, w]`` map bilinearly resized to the model input's ``size`` x ``size``, cut to
    the photo's part of the input (``content``: left, top, right, bottom)."""
    left, top, right, bottom = content
    full = F.interpolate(evidence.float()[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return full[top:bottom, left:right]


def peak_point(region: torch.Tensor, width: int, height: int) -> tuple[float, float]:
    """The strongest point of :func:`photo_region`'s map, in photo pixels."""
    y, x = divmod(int(region.argmax()), region.shape[1])
    return (x + 0.5) * width / region.shape[1], (y + 0.5) * height / region.shape[0]


def _grid(region: torch.Tensor, cells: int) -> torch.Tensor:
    pooled = F.adaptive_avg_pool2d(region[None, None], (cells, cells))[0, 0].clamp(min=0)
    top_value = float(pooled.max())
    return pooled / top_value if top_value > 0 else pooled


def _region(grid: torch.Tensor, start: tuple[int, int], fraction: float) -> tuple[int, int, int, int]:
    """Bounding cells ``(c0, r0, c1, r1)`` (inclusive) of the 4-connected cells >= fraction x start's value."""
    floor = float(grid[start]) * fraction
    rows, cols = grid.shape
    seen, todo = {start}, [start]
    while todo:
        r, c = todo.pop()
        for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
            if 0 <= nr < rows and 0 <= nc < cols and (nr, nc) not in seen and float(grid[nr, nc]) >= floor:
                seen.add((nr, nc))
                todo.append((nr, nc))
    rs = [r for r, _ in seen]
    cs = [c for _, c in seen]
    return min(cs), min(rs), max(cs), max(rs)


def summarize(
    evidence: torch.Tensor, *, size: int, content: tuple[int, int, int, int], width: int, height: int, cells: int = GRID
) -> dict[str, Any]:
    """The answer's ``explanation`` object for one image (see the module docstring).

    Args:
        evidence: the model's map ``[h, w]`` for this image.
        size: the model input's side (``PreprocessSpec.image_size``).
        content: where the photo lies in the input (``preprocess.content_box``).
        width, height: the photo's size as shown.
        cells: rows and columns of the returned grid.
    """
    region = photo_region(evidence, size, content)
    grid = _grid(region, cells)
    px, py = peak_point(region, width, height)
    start = (min(int(py * cells / height), cells - 1), min(int(px * cells / width), cells - 1))
    if float(grid[start]) <= 0:  # all evidence negative, or the peak's cell averaged away
        start = divmod(int(grid.argmax()), cells)
    c0, r0, c1, r1 = _region(grid, start, BOX_FRACTION)
    return {
        "kind": KIND,
        "rows": cells,
        "cols": cells,
        "grid": [[round(float(v), DIGITS) for v in row] for row in grid],
        "image": {"width": width, "height": height},
        "peak": {"x": round(px, 1), "y": round(py, 1)},
        "box": {
            "left": round(c0 * width / cells), "top": round(r0 * height / cells),
            "right": round((c1 + 1) * width / cells), "bottom": round((r1 + 1) * height / cells),
        },  # fmt: skip
    }
