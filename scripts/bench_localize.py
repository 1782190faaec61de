#!/usr/bin/env python
"""Localisation benchmark: does the evidence map point at the watermark?

Pointing game on synthetic positives whose mark boxes are known. Clean photos (the
demo dataset's held-out test negatives by default) each get one mark from the synthetic
renderer (``--styles heldout``: fonts, logos and placements never used in training);
the renderer returns the mark's bounding box. The exported model's ``explain`` (what
``/explanations`` serves) gives the evidence map, read onto the photo by
``handler/evidence.py`` exactly as the handler does. A hit is a map peak inside the
mark's box grown by ``--tolerance`` x the photo's longer side on every edge.

Two trivial baselines get the same boxes: the photo's centre, and the best fixed point
(the point of a 21 x 21 grid of relative positions that hits the most boxes of a
separate set of marks rendered with another seed: the strongest "corner prior").

Rows: all marks; single marks (without the two tiled families, whose box is nearly the
whole photo); faint; small (narrower than a quarter of the photo); marks the model
flags at its own threshold and marks it misses; each style family.

Usage::

    .venv/bin/python scripts/bench_localize.py --export artifacts/real/export-explain --out bench/localize.md
        [--photos DIR] [--count 200] [--seed 0] [--tolerance 0.03] [--styles heldout]

The bundle's ``model.pt`` must have the ``explain`` method (exports since explanations):
``python -m train export --checkpoint CKPT --out DIR`` makes one from a checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import random
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from handler.evidence import summarize  # noqa: E402
from handler.preprocess import PreprocessSpec, content_box, image_to_tensor, sigmoid  # noqa: E402
from train.io import write_text_atomic  # noqa: E402
from train.synth.render import render_watermark  # noqa: E402

TILED = ("tiled_text", "diagonal_tiled")
GRID_POINTS = 21
TARGET = 0.8


DEFAULT_EXPORTS = ("artifacts/real/export-explain", "artifacts/real/export", "artifacts/export")


def load_explaining(export: Path) -> torch.jit.ScriptModule | None:
    """The bundle's TorchScript model if it has the ``explain`` method, else None."""
    if not (export / "model.pt").is_file():
        return None
    model = torch.jit.load(str(export / "model.pt"), map_location="cpu").eval()
    return model if hasattr(model, "explain") else None


def default_export() -> tuple[Path, torch.jit.ScriptModule] | None:
    """The first of :data:`DEFAULT_EXPORTS` whose model has an evidence map: the product's
    model when exported with explanations, else the demo's; None when none has one."""
    for candidate in DEFAULT_EXPORTS:
        model = load_explaining(REPO / candidate)
        if model is not None:
            return REPO / candidate, model
    return None


def clean_photos(folder: Path | None) -> list[Path]:
    """``--photos`` files, else the demo's held-out test negatives (label 0 in test_labels.csv)."""
    if folder is not None:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not files:
            raise SystemExit(f"--photos {folder}: no .jpg/.jpeg/.png files")
        return files
    labels = REPO / "demo_data" / "test_labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels}: missing; run make demo first (it builds demo_data), or pass --photos DIR of clean photos")
    with labels.open(newline="", encoding="utf-8") as fh:
        return [REPO / "demo_data" / "test" / row["file"] for row in csv.DictReader(fh) if row["label"] == "0"]


def hit(point: tuple[float, float], box: Iterable[int], side: int, tolerance: float) -> bool:
    """Whether ``point`` lies in ``box`` (left, top, right, bottom) grown by ``tolerance * side``."""
    left, top, right, bottom = box
    slack = tolerance * side
    return left - slack <= point[0] <= right + slack and top - slack <= point[1] <= bottom + slack


def render_marks(photos: list[Path], count: int, seed: int, styles: str) -> Iterable[tuple[Image.Image, Any]]:
    """``count`` (watermarked photo, WatermarkInfo) pairs, cycling through the photos."""
    rng = random.Random(seed)
    for i in range(count):
        with Image.open(photos[i % len(photos)]) as image:
            clean = image.convert("RGB")
        yield render_watermark(clean, rng, split=styles, jpeg_prob=0.0)


def best_fixed_point(photos: list[Path], count: int, seed: int, styles: str, tolerance: float) -> tuple[float, float]:
    """Relative (x, y) of the grid point hitting the most boxes of a separately rendered set."""
    boxes = [(info.bbox, marked.size) for marked, info in render_marks(photos, count, seed, styles)]
    steps = [i / (GRID_POINTS - 1) for i in range(GRID_POINTS)]

    def score(rel: tuple[float, float]) -> int:
        return sum(hit((rel[0] * w, rel[1] * h), box, max(w, h), tolerance) for box, (w, h) in boxes)

    return max(((x, y) for x in steps for y in steps), key=score)


def measure(model: torch.jit.ScriptModule, spec: PreprocessSpec, threshold: float, marks: Iterable, tolerance: float,
            prior: tuple[float, float]) -> list[dict[str, Any]]:
    """One record per mark: the map's peak and both baselines, hit or not, and the model's verdict."""
    records = []
    for marked, info in marks:
        width, height = marked.size
        with torch.inference_mode():
            logits, evidence = model.explain(image_to_tensor(marked, spec)[None])
        answer = summarize(evidence[0], size=spec.image_size, content=content_box(width, height, spec), width=width, height=height)
        peak = (answer["peak"]["x"], answer["peak"]["y"])
        side = max(width, height)
        records.append({
            "family": info.family, "faint": bool(info.faint), "small": info.rel_width < 0.25,
            "flagged": sigmoid(float(logits.reshape(-1)[0])) >= threshold,
            "map": hit(peak, info.bbox, side, tolerance),
            "centre": hit((width / 2, height / 2), info.bbox, side, tolerance),
            "prior": hit((prior[0] * width, prior[1] * height), info.bbox, side, tolerance),
        })  # fmt: skip
    return records


def table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pointing-game accuracy per group of marks, for the map and both baselines."""
    groups: list[tuple[str, Callable[[dict], bool]]] = [
        ("all marks", lambda r: True),
        ("single marks (not tiled)", lambda r: r["family"] not in TILED),
        ("faint", lambda r: r["faint"]),
        ("small (< 1/4 of the width)", lambda r: r["small"]),
        ("flagged by the model", lambda r: r["flagged"]),
        ("missed by the model", lambda r: not r["flagged"]),
    ]
    groups += [(f"family {f}", lambda r, f=f: r["family"] == f) for f in sorted({r["family"] for r in records})]
    rows = []
    for name, keep in groups:
        chosen = [r for r in records if keep(r)]
        if chosen:
            rows.append({"marks": name, "n": len(chosen), **{k: sum(r[k] for r in chosen) / len(chosen) for k in ("map", "centre", "prior")}})
    return rows


def markdown(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| marks | n | evidence-map peak | centre | best fixed point |", "|---|---|---|---|---|"]
    lines += [f"| {r['marks']} | {r['n']} | {r['map']:.3f} | {r['centre']:.3f} | {r['prior']:.3f} |" for r in rows]
    top = rows[0]
    verdict = "met" if top["map"] >= TARGET else f"missed by {TARGET - top['map']:.3f}"
    lines += ["", f"Target: pointing-game accuracy >= {TARGET} on all marks: **{verdict}** ({top['map']:.3f}; "
              f"best baseline {max(top['centre'], top['prior']):.3f})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, help="bundle whose model.pt has explain (default: the first of "
                        f"{', '.join(DEFAULT_EXPORTS)} that has it)")
    parser.add_argument("--photos", type=Path, help="folder of clean photos to mark (default the demo's test negatives)")
    parser.add_argument("--count", type=int, default=200, help="marks to render and score (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="renderer seed (the fixed-point baseline uses seed + 1)")
    parser.add_argument("--tolerance", type=float, default=0.03, help="box growth per edge, share of the longer side (default 0.03)")
    parser.add_argument("--styles", choices=("heldout", "train", "any"), default="heldout", help="renderer style pool (default heldout)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default all)")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown) and the records beside it (.json)")
    args = parser.parse_args(argv)
    if args.count < 1 or not 0 <= args.tolerance < 0.5:
        parser.error(f"--count {args.count} / --tolerance {args.tolerance}: allowed are count >= 1 and 0 <= tolerance < 0.5")
    torch.set_num_threads(args.threads)
    if args.export is None:
        found = default_export()
        if found is None:
            parser.error(f"no bundle with an evidence map in {', '.join(DEFAULT_EXPORTS)}; train first (make demo) "
                         "or pass --export DIR")
        export, model = found
    else:
        export = args.export
        if not (export / "model.pt").is_file():
            parser.error(f"--export {export}: no model.pt; train first (make demo) or pass --export DIR")
        model = load_explaining(export)
        if model is None:
            parser.error(f"{export / 'model.pt'} has no explain method (exported before explanations); "
                         f"re-export it: python -m train export --checkpoint CKPT --out DIR")
    spec = PreprocessSpec.load(export / "preprocess.json")
    threshold = float(json.loads((export / "threshold.json").read_text(encoding="utf-8"))["threshold"])
    photos = clean_photos(args.photos)
    started = time.time()
    prior = best_fixed_point(photos, args.count, args.seed + 1, args.styles, args.tolerance)
    records = measure(model, spec, threshold, render_marks(photos, args.count, args.seed, args.styles), args.tolerance, prior)
    seconds = time.time() - started
    header = (
        f"Pointing game, {export} ({spec.image_size} px, threshold {threshold:.4f}), {args.count} {args.styles}-style marks on "
        f"{len(photos)} clean photos, tolerance {args.tolerance} x longer side, seed {args.seed}; best fixed point "
        f"({prior[0]:.2f}, {prior[1]:.2f}) of the width and height; {platform.processor() or platform.machine()}, "
        f"{args.threads} threads, {seconds:.0f} s, {time.strftime('%Y-%m-%d')}"
    )
    text = markdown(table(records), header)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
        write_text_atomic(args.out.with_suffix(".json"), json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
