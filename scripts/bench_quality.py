#!/usr/bin/env python
"""Quality benchmark: the demo recipe over several seeds, evaluated on three test sets.

In one run, on this machine, for every seed (default 0, 1, 2):

1. build the demo dataset with that seed (its own split of the base photos, crops and
   marks) and its evaluation sets, in ``OUT/seed-N/data``;
2. train with the demo's recipe (``recipes/demo.json``, as ``make demo``) and that seed;
3. evaluate the exported model on
   (a) the held-out demo test split (in-distribution styles, unseen photos),
   (b) ``eval/heldout_styles``: fonts, logos and placements never used in training,
   (c) ``eval/hard_negatives``: clean photos with scene text (labels, packaging) only,
   and, when given, a folder of real photos as a small sanity set;
4. print a markdown table per seed and one of the mean and spread (min-max) over the
   seeds, against the demo's targets (test FPR <= 5 %, test recall >= 0.8; F1 >= 0.95 on
   (b), FPR <= 2 % on (c)), and write them with the raw figures to ``OUT/quality.md`` and
   ``OUT/quality.json``.

Usage::

    .venv/bin/python scripts/bench_quality.py --out bench/quality [--seeds 0 1 2]
        [--recipe recipes/demo.json] [--epochs N] [--real DIR]

Extra ``train`` options can follow ``--``, e.g. ``-- --image-size 448``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.cli import add_train_arguments, config_from_args  # noqa: E402
from train.synth.demo import build_demo_dataset  # noqa: E402
from train.evaluate import evaluate_folder  # noqa: E402
from train.io import write_json_atomic, write_text_atomic  # noqa: E402
from train.training import run_training  # noqa: E402

TARGETS = {
    "demo_test": (("fpr", "<=", 0.05), ("recall", ">=", 0.8)),
    "heldout_styles": (("f1", ">=", 0.95),),
    "hard_negatives": (("fpr", "<=", 0.02),),
}
SUMMARY_KEYS = ("f1", "recall", "fpr", "roc_auc")


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/quality"), help="output folder (default bench/quality)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="dataset and training seeds (default 0 1 2)")
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.json", help="training options (default recipes/demo.json, as make demo)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the recipe's)")
    parser.add_argument("--real", type=Path, help="optional folder of real labelled photos (positive/, negative/) as a sanity set")
    parser.add_argument("--reuse-data", action="store_true", help="keep each seed's OUT/seed-N/data if it exists")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then extra `python -m train train` options")
    return parser


def _fmt(value: float | None, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f} %" if pct else f"{value:.3f}"


def _target(name: str, metrics: dict) -> str:
    """The targets of set ``name`` and whether ``metrics`` meets them ("" when it has none)."""
    parts = []
    for key, op, bound in TARGETS.get(name, ()):
        value = metrics.get(key)
        if value is None:
            parts.append(f"{key} {op} {bound:g}: n/a")
            continue
        ok = value >= bound if op == ">=" else value <= bound
        parts.append(f"{key} {op} {bound:g}: {'met' if ok else 'MISSED'}")
    return "; ".join(parts)


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


def summary(per_seed: list[dict]) -> str:
    """Mean and spread (min-max) over the seeds of each set's figures, as a markdown table."""
    lines = [
        "| set | seeds | " + " | ".join(f"{key} mean (min-max)" for key in SUMMARY_KEYS) + " | target (on the mean) |",
        "|---|---|" + "---|" * len(SUMMARY_KEYS) + "---|",
    ]
    for name in per_seed[0]["sets"]:
        cells, means = [], {}
        for key in SUMMARY_KEYS:
            values = [run["sets"][name][key] for run in per_seed if run["sets"][name].get(key) is not None]
            if not values:
                cells.append("–")
                continue
            means[key] = sum(values) / len(values)
            pct = key == "fpr"
            cells.append(f"{_fmt(means[key], pct)} ({_fmt(min(values), pct)}-{_fmt(max(values), pct)})")
        lines.append(f"| {name} | {len(per_seed)} | " + " | ".join(cells) + f" | {_target(name, means)} |")
    return "\n".join(lines)


def run_seed(seed: int, args: argparse.Namespace, out: Path) -> dict:
    """Build the demo dataset with ``seed``, train the recipe, evaluate; returns the raw figures."""
    data = out / "data"
    t0 = time.time()
    if not (args.reuse_data and (data / "manifest.json").exists()):
        build_demo_dataset(data, seed=seed, overwrite=True, progress=False)
    data_seconds = time.time() - t0

    extra = [a for a in args.train_args if a != "--"]
    train_parser = argparse.ArgumentParser(prog="bench_quality.py -- ")
    add_train_arguments(train_parser)
    epochs = ["--epochs", str(args.epochs)] if args.epochs else []
    train_ns = train_parser.parse_args(
        ["--config", str(args.recipe), "--data", str(data), "--output", str(out / "run"), "--seed", str(seed),
         "--no-progress", *epochs, *extra]
    )  # fmt: skip
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
        f"Seed {seed}: weights {config.weights}, {config.image_size} px, {config.epochs} epochs "
        f"(unfreeze from {config.unfreeze_from}, amp {config.amp}), threshold {result.threshold['threshold']:.4f} "
        f"by rule {result.threshold['rule']}. Dataset build {data_seconds:.0f} s, training wall time "
        f"{train_seconds / 60:.1f} min ({result.epochs_run} epochs run), validation {result.select_metric} "
        f"{result.best_score:.3f}."
    )
    return {
        "seed": seed, "text": header + "\n\n" + table(rows), "data_seconds": data_seconds,
        "train_seconds": train_seconds, "config": asdict(config), "threshold": result.threshold,
        "val": result.val_metrics, "sets": dict(rows),
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.recipe.is_file():
        print(f"error: --recipe {args.recipe}: no such file", file=sys.stderr)
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    per_seed = [run_seed(seed, args, out / f"seed-{seed}") for seed in args.seeds]
    header = (
        f"Quality benchmark ({time.strftime('%Y-%m-%d')}, {platform.machine()}, {torch.get_num_threads()} torch "
        f"threads, torch {torch.__version__}): recipe {args.recipe}, seeds {' '.join(map(str, args.seeds))}. "
        f"Training wall time {min(r['train_seconds'] for r in per_seed) / 60:.1f}-"
        f"{max(r['train_seconds'] for r in per_seed) / 60:.1f} min per seed."
    )
    text = "\n\n".join([header, "Mean and spread over the seeds:", summary(per_seed), *(r["text"] for r in per_seed)]) + "\n"
    print(text)
    write_text_atomic(out / "quality.md", text)
    raw = {"recipe": str(args.recipe), "seeds": [{k: v for k, v in r.items() if k != "text"} for r in per_seed]}
    write_json_atomic(out / "quality.json", json.loads(json.dumps(raw, default=str)), sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
