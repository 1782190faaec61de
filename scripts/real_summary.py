#!/usr/bin/env python
"""Summary table of a `make train-real` run: training cost, held-out quality, generalisation.

Reads what the run wrote under ``OUT`` (``reports/metrics.json``, ``eval/*/metrics.json``,
``test_predictions.csv``), prints a markdown summary and writes it to ``OUT/summary.md``
(and the figures to ``OUT/summary.json``). Missing parts are shown as "not run".

Usage::

    .venv/bin/python scripts/real_summary.py --out artifacts/real [--train-seconds S --total-seconds S]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.io import write_bytes_atomic  # noqa: E402

EVAL_SETS = (
    ("holdout", "held-out real photos (never trained, selected or thresholded on)"),
    ("heldout_styles", "synthetic marks in held-out fonts, logos and placements"),
    ("hard_negatives", "clean photos with printed product text"),
    ("real_samples", "twelve real stock photos (6 watermarked, 6 clean)"),
)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _f(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"


def test_share(path: Path) -> tuple[int, int] | None:
    """(predicted watermarked, scored) of a predict CSV."""
    if not path.is_file():
        return None
    with path.open(encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if not r.get("error")]
    return sum(r["watermark"] == "true" for r in rows), len(rows)


def build(out: Path, train_seconds: float | None, total_seconds: float | None) -> tuple[str, dict[str, Any]]:
    report = _read_json(out / "reports" / "metrics.json") or {}
    evals = {name: _read_json(out / "eval" / name / "metrics.json") for name, _ in EVAL_SETS}
    share = test_share(out / "test_predictions.csv")
    counts = report.get("counts", {})
    lines = ["## Real-data run", ""]
    lines.append("| | |")
    lines.append("|---|---|")
    lines.append(f"| training wall time (scan, cache, epochs, threshold, export) | {_minutes(train_seconds)} |")
    lines.append(f"| whole run (with evaluation and test predictions) | {_minutes(total_seconds)} |")
    lines.append(f"| feature cache fill | {_minutes(report.get('seconds', {}).get('cache'))} |")
    lines.append(f"| peak RAM of training | {_f((report.get('peak_rss_mb') or 0) / 1024, 1)} GiB |")
    lines.append(
        f"| photos | train {counts.get('train_positive', '–')} watermarked + {counts.get('train_negative', '–')} clean; "
        f"validation {counts.get('val_positive', '–')} + {counts.get('val_negative', '–')}; "
        f"held out {counts.get('holdout_positive', '–')} + {counts.get('holdout_negative', '–')} |"
    )
    if "duplicate_groups" in counts:
        lines.append(
            f"| duplicates | {counts['duplicate_groups']} groups; {counts.get('conflict_files', 0)} files in groups filed "
            "under both labels, left out (reports/duplicates.csv) |"
        )
    if counts.get("relabelled_files"):
        lines.append(
            f"| relabelled | {counts['relabelled_files']} file{'s' if counts['relabelled_files'] != 1 else ''} by the run's relabel file, each listed with its reason "
            "in reports/relabelled.csv |"
        )
    threshold = report.get("threshold", {})
    lines.append(f"| threshold | {_f(threshold.get('threshold'), 4)} ({threshold.get('rule', '–')}: {threshold.get('note', '')}) |")
    lines.append(f"| best epoch | {report.get('best_epoch', '–')} of {len(report.get('history', []))} |")
    lines += ["", "| set | n | F1 | precision | recall | FPR | ROC-AUC |", "|---|---|---|---|---|---|---|"]
    for name, what in EVAL_SETS:
        m = evals[name]
        if m is None:
            lines.append(f"| {name}: {what} | not run | | | | | |")
            continue
        lines.append(
            f"| {name}: {what} | {m['n']} | {_f(m.get('f1'))} | {_f(m.get('precision'))} | {_f(m.get('recall'))} "
            f"| {_f(m.get('fpr'))} | {_f(m.get('roc_auc'))} |"
        )
    int8 = (_read_json(out / "export" / "model_info.json") or {}).get("int8")
    if int8 and int8.get("check"):
        q, f = int8["check"]["int8"], int8["check"]["fp32"]
        verdict = "passed: the archive serves it" if int8.get("passed") else "failed: the archive serves TorchScript (" + "; ".join(int8.get("failures", [])) + ")"
        lines += [
            "",
            f"int8 model (export-int8) on the {int8['check_images']} held-out photos, each model at its own threshold: "
            f"F1 {_f(q['f1'])} (fp32 {_f(f['f1'])}), FPR {_f(q['fpr'])} (fp32 {_f(f['fpr'])}), ROC-AUC {_f(q['roc_auc'])} "
            f"(fp32 {_f(f['roc_auc'])}), threshold {_f(int8['thresholds']['int8'], 4)}; check {verdict}.",
        ]
    if share:
        lines.append("")
        lines.append(f"Unlabelled test photos predicted watermarked: {share[0]} of {share[1]} ({100 * share[0] / max(1, share[1]):.1f} %).")
    history = report.get("history", [])
    if history:
        curve = any("holdout_f1" in row for row in history)
        lines += ["", "By epoch (time vs quality; each epoch's own validation threshold):", ""]
        head = "| epoch | training time so far | val ROC-AUC | val F1 | val FPR |"
        if curve:
            head += " held-out F1 | held-out FPR | held-out ROC-AUC |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for row in history:
            line = (
                f"| {row['epoch']} | {_minutes(row.get('elapsed_seconds'))} | {_f(row.get('val_roc_auc'))} "
                f"| {_f(row.get('val_f1'))} | {_f(row.get('val_fpr'))} |"
            )
            if curve:
                line += f" {_f(row.get('holdout_f1'))} | {_f(row.get('holdout_fpr'))} | {_f(row.get('holdout_roc_auc'))} |"
            lines.append(line)
        if curve:
            lines += ["", "Held-out columns: scored for this curve only, never used to pick the epoch or the threshold."]
    data = {
        "train_seconds": train_seconds, "total_seconds": total_seconds, "report": report, "eval": evals,
        "test_predicted_watermarked": share,
    }
    return "\n".join(lines) + "\n", data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("artifacts/real"), help="the run's output folder")
    parser.add_argument("--train-seconds", type=float, help="wall time of the training step")
    parser.add_argument("--total-seconds", type=float, help="wall time of the whole run")
    args = parser.parse_args(argv)
    if not args.out.is_dir():
        parser.error(f"--out {args.out}: not a folder; run make train-real first")
    text, data = build(args.out, args.train_seconds, args.total_seconds)
    write_bytes_atomic(args.out / "summary.md", text.encode("utf-8"))
    write_bytes_atomic(args.out / "summary.json", (json.dumps(data, indent=1, default=str) + "\n").encode("utf-8"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
