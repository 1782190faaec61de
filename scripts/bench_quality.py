#!/usr/bin/env python
"""Quality benchmark: train on the demo train split, evaluate on three test sets.

In one run, on this machine:

1. build the demo dataset (seeded) with its evaluation sets;
2. train with ``fid-inception`` weights on the demo train split (wall time stated);
3. evaluate the exported model on
   (a) the held-out demo test split (in-distribution styles, unseen photos),
   (b) ``eval/heldout_styles``: fonts, logos and placements never used in training,
   (c) ``eval/hard_negatives``: clean photos with scene text (labels, packaging) only,
   and, when given, a folder of real photos as a small sanity set;
4. print a markdown table (targets: F1 >= 0.95 on (b), FPR <= 2 % on (c)) and write it,
   with the raw figures, to ``OUT/quality.md`` and ``OUT/quality.json``.

Usage::

    .venv/bin/python scripts/bench_quality.py --out bench/quality [--epochs 5] [--real DIR]

Extra ``train`` options can follow ``--``, e.g. ``-- --image-size 448``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.cli import add_train_arguments, config_from_args  # noqa: E402
from train.synth.demo import build_demo_dataset  # noqa: E402
from train.evaluate import evaluate_folder  # noqa: E402
from train.training import run_training  # noqa: E402

TARGETS = {"heldout_styles": ("f1", ">=", 0.95), "hard_negatives": ("fpr", "<=", 0.02)}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/quality"), help="output folder (default bench/quality)")
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5, as the demo)")
    parser.add_argument("--real", type=Path, help="optional folder of real labelled photos (positive/, negative/) as a sanity set")
    parser.add_argument("--reuse-data", action="store_true", help="keep OUT/data if it exists")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then extra `python -m train train` options")
    return parser


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def _target(name: str, metrics: dict) -> str:
    if name not in TARGETS:
        return ""
    key, op, bound = TARGETS[name]
    value = metrics.get(key)
    if value is None:
        return f"{key} {op} {bound}: n/a"
    ok = value >= bound if op == ">=" else value <= bound
    return f"{key} {op} {bound:g}: {'met' if ok else 'MISSED'}"


def table(rows: list[tuple[str, dict]]) -> str:
    lines = [
        "| set | n (pos/neg) | F1 | precision | recall | FPR | ROC-AUC | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m in rows:
        lines.append(
            f"| {name} | {m['n']} ({m['positives']}/{m['negatives']}) | {_fmt(m['f1'])} | {_fmt(m['precision'])} | "
            f"{_fmt(m['recall'])} | {_fmt(m['fpr'], pct=True)} | {_fmt(m['roc_auc'])} | {_target(name, m)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"

    t0 = time.time()
    if not (args.reuse_data and (data / "manifest.json").exists()):
        build_demo_dataset(data, seed=args.seed, overwrite=True, progress=False)
    data_seconds = time.time() - t0

    extra = [a for a in args.train_args if a != "--"]
    train_parser = argparse.ArgumentParser(prog="bench_quality.py -- ")
    add_train_arguments(train_parser)
    train_ns = train_parser.parse_args(
        ["--data", str(data), "--output", str(out / "run"), "--epochs", str(args.epochs), "--seed", str(args.seed), "--no-progress", *extra]
    )
    config = config_from_args(train_ns)
    t1 = time.time()
    result = run_training(config)
    train_seconds = time.time() - t1

    export = out / "run" / "export"
    sets = [
        ("demo_test", data / "test", data / "test_labels.csv"),
        ("heldout_styles", data / "eval" / "heldout_styles", None),
        ("hard_negatives", data / "eval" / "hard_negatives", None),
    ]
    if args.real:
        sets.append(("real_sanity", args.real, None))
    rows = []
    for name, folder, labels in sets:
        metrics = evaluate_folder(
            export, folder, out / "eval" / name, labels_csv=labels, overwrite=True, progress=False,
            mlflow_run_id=result.run_id, name=name,
        )
        rows.append((name, metrics))

    header = (
        f"Quality benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}): weights {config.weights}, {config.image_size} px, {config.epochs} epochs "
        f"(unfreeze from {config.unfreeze_from}), threshold {result.threshold['threshold']:.4f} by rule "
        f"{result.threshold['rule']}. Dataset build {data_seconds:.0f} s, training wall time {train_seconds / 60:.1f} min "
        f"({result.epochs_run} epochs run), validation {result.select_metric} {result.best_score:.3f}."
    )
    text = header + "\n\n" + table(rows) + "\n"
    print(text)
    (out / "quality.md").write_text(text, encoding="utf-8")
    raw = {
        "data_seconds": data_seconds, "train_seconds": train_seconds, "config": vars(config) if hasattr(config, "__dict__") else {},
        "threshold": result.threshold, "val": result.val_metrics, "sets": {n: m for n, m in rows},
    }
    (out / "quality.json").write_text(json.dumps(raw, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
