"""Evaluate an export bundle on a labelled folder: metrics, per-style breakdown, figures.

``python -m train evaluate --export artifacts/export --data FOLDER --out DIR``

Labelled input, either:

* ``FOLDER/positive/`` and/or ``FOLDER/negative/`` (searched recursively; at least one
  must hold images; a negatives-only set such as hard negatives is valid), or
* an unlabelled ``FOLDER`` plus ``--labels CSV`` with columns ``file,label`` (``file``
  relative to FOLDER; ``label`` 1/0 or positive/negative; extra columns allowed), e.g.
  ``demo_data/test`` + ``demo_data/test_labels.csv``.

Style information for the per-style breakdown comes from the extra columns of the labels
CSV and/or ``FOLDER/styles.csv`` (columns ``file,label,family,...``, ``file`` relative to
FOLDER such as ``positive/x.jpg``); ``family`` is the main key, ``font``, ``placement``
and ``scene_text`` are broken down too when present.

Scoring is :func:`train.predict.score_files`: the serving preprocessing
(:mod:`handler.preprocess`) and the bundle's threshold, so the figures describe what the
TorchServe handler answers (unless ``--tta``, whose scores the threshold was not chosen
for). Unreadable files are skipped, listed and counted.

Output folder (built beside the target and renamed into place):

``metrics.json``, ``predictions.csv``, ``per_style.csv``, ``confusion_matrix.png``,
``pr_curve.png`` and ``roc_curve.png`` (only when both classes are present),
``worst_false_positives.png``, ``worst_false_negatives.png`` (contact sheets).

Metrics that need a class that is absent are ``null``: with no positives precision,
recall, F1, ROC-AUC and AP; with no negatives FPR, ROC-AUC and AP.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from handler.preprocess import ImageDecodeError, load_image_file
from train.metrics import binary_metrics, confusion_figure, pr_curve_figure
from train.io import default_tracking_uri, sqlite_path, staged_folder, write_csv_atomic, write_json_atomic
from train.predict import format_probability, list_images, quiet_load_export, score_files

log = logging.getLogger(__name__)

CLASS_FOLDERS = (("positive", 1), ("negative", 0))
STYLES_FILE = "styles.csv"
LABEL_VALUES = {"1": 1, "positive": 1, "0": 0, "negative": 0}
STYLE_KEY = "family"
STYLE_ATTRIBUTES = ("family", "font", "placement", "scene_text")  # broken down when present
NO_STYLE = "(none)"
METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "fpr", "roc_auc", "average_precision")
COUNT_KEYS = ("tp", "fp", "fn", "tn")
SHEET_MAX = 16
THUMB = 160
SHEET_COLUMNS = 4


@dataclass
class Item:
    path: Path
    file: str  # relative to the data folder (posix), the key of every output row
    label: int
    style: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------ reading the labels


def parse_label(value: str, where: str) -> int:
    key = (value or "").strip().lower()
    if key not in LABEL_VALUES:
        raise ValueError(f"{where}: label {value!r}: allowed are 1/0 or positive/negative")
    return LABEL_VALUES[key]


def _norm_key(file: str) -> str:
    return Path(file.strip()).as_posix()  # "./positive/x.jpg" -> "positive/x.jpg"


def read_style_table(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, int], list[str]]:
    """``styles.csv`` (or a labels CSV): per file its extra columns, its label, the column order."""
    with Path(path).open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "file" not in columns:
            raise ValueError(f"{path}: needs a 'file' column; found {columns}")
        extra = [c for c in columns if c not in ("file", "label") and c]
        styles: dict[str, dict[str, str]] = {}
        labels: dict[str, int] = {}
        for lineno, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not row.get("file"):
                continue
            key = _norm_key(row["file"])
            if key in styles:
                raise ValueError(f"{path}:{lineno}: file {row['file']!r} is listed twice")
            styles[key] = {c: row.get(c, "") for c in extra}
            if "label" in columns and row.get("label", "") != "":
                labels[key] = parse_label(row["label"], f"{path}:{lineno}")
    return styles, labels, extra


def _order_columns(columns: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for c in (STYLE_KEY, *columns):
        if c not in seen:
            seen.append(c)
    return seen


def collect_items(data: Path, labels_csv: Path | None = None) -> tuple[list[Item], list[str], int]:
    """The labelled images of ``data``: ``(items, style_columns, ignored_file_count)``."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: not a folder")
    styles_path = data / STYLES_FILE
    styles, style_labels, columns = read_style_table(styles_path) if styles_path.is_file() else ({}, {}, [])
    items: list[Item] = []
    ignored = 0
    if labels_csv is not None:
        labels_csv = Path(labels_csv)
        if not labels_csv.is_file():
            raise FileNotFoundError(f"--labels {labels_csv}: not found")
        extras, labels, csv_columns = read_style_table(labels_csv)
        if not labels:
            raise ValueError(f"--labels {labels_csv}: needs columns file,label and at least one labelled row")
        missing = sorted(set(extras) - set(labels))
        if missing:
            raise ValueError(f"--labels {labels_csv}: no label for {len(missing)} file(s), e.g. {missing[0]!r}")
        columns = _order_columns([*csv_columns, *columns])
        for key in sorted(labels):
            style = {**styles.get(key, {}), **{k: v for k, v in extras[key].items() if v != ""}}
            items.append(Item(data / key, key, labels[key], style))
        images, other = list_images(data)
        listed = {item.path for item in items}
        unlisted = [p for p in images if p not in listed]
        ignored = len(other) + len(unlisted)
        if unlisted:
            log.warning("%d image(s) under %s are not in %s; ignored", len(unlisted), data, labels_csv)
    else:
        present = [(name, label) for name, label in CLASS_FOLDERS if (data / name).is_dir()]
        if not present:
            raise FileNotFoundError(
                f"--data {data}: has neither positive/ nor negative/; "
                "pass --labels CSV (columns file,label) for an unlabelled folder"
            )
        mismatched = 0
        for name, label in present:
            images, other = list_images(data / name)
            ignored += len(other)
            for path in images:
                key = path.relative_to(data).as_posix()
                if key in style_labels and style_labels[key] != label:
                    mismatched += 1
                items.append(Item(path, key, label, dict(styles.get(key, {}))))
        if mismatched:
            log.warning("%s: %d label(s) disagree with the class folder; the folder wins", styles_path, mismatched)
        if not items:
            raise ValueError(
                f"--data {data}: no image files in {' or '.join(f'{n}/' for n, _ in present)}; "
                "at least one class folder must hold images"
            )
        columns = _order_columns(columns)
    if styles:
        known = {item.file for item in items}
        unmatched = sum(1 for key in styles if key not in known)
        if unmatched:
            log.warning("%s: %d row(s) name no evaluated image", styles_path, unmatched)
    return items, columns, ignored


# ------------------------------------------------------------------ metrics


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def compute_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """:func:`train.metrics.binary_metrics` with metrics that need an absent class as None."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    m = binary_metrics(labels, probs, threshold)
    positives, negatives = int(np.sum(labels == 1)), int(np.sum(labels == 0))
    if positives == 0:
        for key in ("precision", "recall", "f1"):
            m[key] = None
    if negatives == 0:
        m["fpr"] = None
    if positives == 0 or negatives == 0:
        m["roc_auc"] = m["average_precision"] = None
    return {k: _finite_or_none(v) for k, v in m.items()}


def style_breakdown(items: Sequence[Item], probs: np.ndarray, threshold: float, column: str) -> dict[str, dict[str, Any]]:
    """Per value of ``column``: n, positives, negatives, recall (positives), FPR (negatives)."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.style.get(column, "") or NO_STYLE, []).append(i)
    table = {}
    for value in sorted(groups):
        idx = np.array(groups[value])
        lab = np.array([items[i].label for i in idx])
        pred = probs[idx] >= threshold
        pos, neg = int(np.sum(lab == 1)), int(np.sum(lab == 0))
        table[value] = {
            "n": int(idx.size),
            "positives": pos,
            "negatives": neg,
            "recall": float(np.mean(pred[lab == 1])) if pos else None,
            "fpr": float(np.mean(pred[lab == 0])) if neg else None,
            "mean_probability": float(np.mean(probs[idx])),
        }
    return table


# ------------------------------------------------------------------ figures


def roc_curve_figure(labels: np.ndarray, probs: np.ndarray, threshold: float, title: str = "ROC"):
    """Matplotlib figure of the ROC curve with the operating point at ``threshold`` marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(labels, probs)
    at = binary_metrics(labels, probs, threshold)
    auc = roc_auc_score(labels, probs)
    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.plot(fpr, tpr, label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.scatter([at["fpr"]], [at["recall"]], color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate (recall)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _fit_text(draw: ImageDraw.ImageDraw, text: str, font, width: int, *, keep_end: bool = True) -> str:
    """Shorten ``text`` with an ellipsis to ``width`` px (file names keep their end)."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength("…" + text if keep_end else text + "…", font=font) > width:
        text = text[1:] if keep_end else text[:-1]
    return "…" + text if keep_end else text + "…"


def contact_sheet(entries: Sequence[tuple[Path, str, float, str]], title: str, subtitle: str = "") -> Image.Image:
    """Grid of thumbnails (``THUMB`` px) with probability, style and file name under each.

    ``entries`` are ``(path, file, probability, family)`` in display order; with none, a small
    image saying ``none`` is returned. Thumbnails are decoded by
    :func:`handler.preprocess.load_image_file` (EXIF orientation applied).
    """
    font, small = _font(13), _font(11)
    pad, caption, header = 8, 34, 46
    cols = max(1, min(SHEET_COLUMNS, len(entries)))
    rows = max(1, math.ceil(len(entries) / cols))
    cell_w, cell_h = THUMB + 2 * pad, THUMB + caption + 2 * pad
    width = max(cols * cell_w, 520)
    height = header + (rows * cell_h if entries else 30)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 6), _fit_text(draw, title, font, width - 2 * pad, keep_end=False), fill="black", font=font)
    draw.text((pad, 25), _fit_text(draw, subtitle, small, width - 2 * pad, keep_end=False), fill=(90, 90, 90), font=small)
    if not entries:
        draw.text((pad, header + 4), "none", fill=(0, 120, 0), font=font)
        return sheet
    for n, (path, file, prob, family) in enumerate(entries):
        x0 = (n % cols) * cell_w + pad
        y0 = header + (n // cols) * cell_h + pad
        try:
            thumb = load_image_file(path)
            thumb.thumbnail((THUMB, THUMB))
            sheet.paste(thumb, (x0 + (THUMB - thumb.width) // 2, y0 + (THUMB - thumb.height) // 2))
        except (ImageDecodeError, OSError) as exc:  # decoded fine moments ago; keep the sheet anyway
            draw.text((x0, y0 + THUMB // 2), _fit_text(draw, f"unreadable: {exc}", small, THUMB), fill="red", font=small)
        draw.rectangle([x0 - 1, y0 - 1, x0 + THUMB, y0 + THUMB], outline=(200, 200, 200))
        draw.text((x0, y0 + THUMB + 3), f"p = {prob:.4f}", fill=(180, 0, 0), font=font)
        if family:
            offset = int(draw.textlength(f"p = {prob:.4f}  ", font=font))
            short = _fit_text(draw, family, small, THUMB - offset, keep_end=False)
            draw.text((x0 + offset, y0 + THUMB + 5), short, fill=(0, 70, 160), font=small)
        draw.text((x0, y0 + THUMB + 19), _fit_text(draw, file, small, THUMB), fill="black", font=small)
    return sheet


# ------------------------------------------------------------------ output folder


def _refuse_dangerous_out(out_dir: Path, data: Path, export_dir: Path) -> None:
    out = out_dir.resolve()
    for what, other in (("--data", data), ("--export", export_dir)):
        other = Path(other).resolve()
        if out == other or out in other.parents:
            raise ValueError(f"--out {out_dir}: would replace {what} {other}; choose another output folder")


def _metric_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "eval"


def resolve_tracking_uri(tracking_uri: str | None, export_dir: Path) -> str:
    """Explicit URI, else ``$MLFLOW_TRACKING_URI``, else the training store recorded in the bundle."""
    if tracking_uri:
        uri = tracking_uri
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri = os.environ["MLFLOW_TRACKING_URI"]
    else:
        info_path = Path(export_dir) / "model_info.json"
        config = {}
        if info_path.is_file():
            try:
                config = json.loads(info_path.read_text(encoding="utf-8")).get("config") or {}
            except (OSError, ValueError, AttributeError):
                config = {}
        if config.get("tracking_uri"):
            uri = config["tracking_uri"]
        elif config.get("output"):
            uri = default_tracking_uri(config["output"])
        else:
            raise ValueError("--mlflow-run needs --tracking-uri (the bundle does not record its MLflow store)")
    if (db := sqlite_path(uri)) is not None and not db.is_file():
        raise ValueError(f"--tracking-uri {uri}: no such SQLite store (MLflow would create an empty one)")
    return uri


def _mlflow_client(run_id: str, uri: str):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise ValueError(f"--mlflow-run {run_id}: no such run in {uri} ({exc.message})") from None
    return client


def mlflow_metrics(result: dict[str, Any], prefix: str) -> dict[str, float]:
    """Flat ``eval_<name>_<metric>`` values (finite numbers only) for MLflow."""
    values: dict[str, float] = {}
    for key in (*METRIC_KEYS, *COUNT_KEYS, "n", "positives", "negatives", "skipped"):
        values[f"{prefix}_{key}"] = result.get(key)
    for family, row in result.get("per_style", {}).items():
        for key in ("n", "recall", "fpr"):
            values[f"{prefix}_style_{_metric_name(family)}_{key}"] = row.get(key)
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def log_to_mlflow(client, run_id: str, out_dir: Path, result: dict[str, Any], name: str) -> dict[str, Any]:
    from mlflow.entities import Metric

    prefix = f"eval_{_metric_name(name)}"
    stamp = int(time.time() * 1000)
    values = mlflow_metrics(result, prefix)
    client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in values.items()])
    artifact_path = f"evaluation/{re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._') or 'eval'}"
    client.log_artifacts(run_id, str(out_dir), artifact_path)
    client.set_tag(run_id, f"evaluation.{_metric_name(name)}.data", str(result["data"])[:500])
    return {"run_id": run_id, "artifact_path": artifact_path, "metrics": sorted(values)}


# ------------------------------------------------------------------ main entry


def evaluate_folder(
    export_dir: Path,
    data: Path,
    out_dir: Path,
    *,
    labels_csv: Path | None = None,
    batch_size: int = 8,
    tta: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    mlflow_run_id: str | None = None,
    tracking_uri: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Score a labelled folder with the bundle and write the evaluation folder ``out_dir``.

    See the module docstring for the input layouts and the files written. With
    ``mlflow_run_id`` the metrics (``eval_<name>_<metric>``, per family
    ``eval_<name>_style_<family>_{n,recall,fpr}``) and every file (under
    ``evaluation/<name>/``) are added to that existing run; ``tracking_uri`` defaults to
    ``$MLFLOW_TRACKING_URI``, else the training store recorded in the bundle.

    Returns:
        The content of ``metrics.json`` plus ``out_dir`` (and ``mlflow`` when logged).

    Raises:
        FileNotFoundError: missing data folder, labels CSV or export bundle.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is false.
        ValueError: no labelled images, bad labels, no readable image, unknown run.
    """
    export_dir, data, out_dir = Path(export_dir), Path(data), Path(out_dir)
    if (out_dir.exists() or out_dir.is_symlink()) and not overwrite:
        raise FileExistsError(f"{out_dir}: output folder already exists; pass --overwrite to replace it")
    _refuse_dangerous_out(out_dir, data, export_dir)
    name = name or data.resolve().name
    items, style_columns, ignored = collect_items(data, labels_csv)
    model, spec, threshold_info = quiet_load_export(export_dir)
    client = uri = None
    if mlflow_run_id:  # fail before the scoring, not after
        uri = resolve_tracking_uri(tracking_uri, export_dir)
        client = _mlflow_client(mlflow_run_id, uri)
    threshold = float(threshold_info["threshold"])

    probs_all, errors = score_files(model, spec, [it.path for it in items], batch_size=batch_size, tta=tta, progress=progress)
    ok = ~np.isnan(probs_all)
    scored = [it for it, good in zip(items, ok) if good]
    if not scored:
        first = next(iter(errors.values()))
        raise ValueError(f"--data {data}: none of the {len(items)} labelled files could be read (first error: {first})")
    labels = np.array([it.label for it in scored])
    probs = probs_all[ok]

    m = compute_metrics(labels, probs, threshold)
    per_style = style_breakdown(scored, probs, threshold, STYLE_KEY) if any(it.style.get(STYLE_KEY) for it in scored) else {}
    per_attribute = {
        col: style_breakdown(scored, probs, threshold, col)
        for col in STYLE_ATTRIBUTES[1:]
        if col in style_columns and any(it.style.get(col) for it in scored)
    }
    pred = probs >= threshold
    fp_idx = sorted(np.flatnonzero(pred & (labels == 0)), key=lambda i: (-probs[i], scored[i].file))
    fn_idx = sorted(np.flatnonzero(~pred & (labels == 1)), key=lambda i: (probs[i], scored[i].file))
    both = bool(np.any(labels == 1) and np.any(labels == 0))
    result: dict[str, Any] = {
        "name": name,
        "data": str(data),
        "labels_csv": str(labels_csv) if labels_csv else None,
        "export": str(export_dir),
        "n": int(labels.size),
        "positives": int(np.sum(labels == 1)),
        "negatives": int(np.sum(labels == 0)),
        "skipped": len(errors),
        "skipped_files": [{"file": it.file, "error": errors[it.path]} for it in items if it.path in errors],
        "ignored_files": ignored,
        "threshold": threshold,
        "threshold_rule": threshold_info.get("rule"),
        "threshold_note": threshold_info.get("note"),
        "tta": tta,
        **({"tta_note": "the threshold was chosen on validation scores without TTA"} if tta else {}),
        **{k: m[k] for k in METRIC_KEYS},
        **{k: m[k] for k in COUNT_KEYS},
        "per_style": per_style,
        "per_attribute": per_attribute,
        "worst_false_positives": [{"file": scored[i].file, "probability": float(probs[i])} for i in fp_idx[:SHEET_MAX]],
        "worst_false_negatives": [{"file": scored[i].file, "probability": float(probs[i])} for i in fn_idx[:SHEET_MAX]],
    }

    with staged_folder(out_dir) as staging:
        files = _write_outputs(
            staging, result, items, probs_all, errors, style_columns, scored, labels, probs, fp_idx, fn_idx, both
        )
        result["files"] = files
        write_json_atomic(staging / "metrics.json", result, sort_keys=False, allow_nan=False)
    result["out_dir"] = str(out_dir)
    if client is not None:
        result["mlflow"] = {"tracking_uri": uri, **log_to_mlflow(client, mlflow_run_id, out_dir, result, name)}
    return result


def _write_outputs(
    folder: Path,
    result: dict[str, Any],
    items: Sequence[Item],
    probs_all: np.ndarray,
    errors: dict[Path, str],
    style_columns: Sequence[str],
    scored: Sequence[Item],
    labels: np.ndarray,
    probs: np.ndarray,
    fp_idx: Sequence[int],
    fn_idx: Sequence[int],
    both: bool,
) -> list[str]:
    threshold = result["threshold"]
    rows = []
    for item, prob in sorted(zip(items, probs_all), key=lambda ip: ip[0].file):
        skipped = item.path in errors
        rows.append(
            [item.file, item.label, format_probability(prob), "" if skipped else ("true" if prob >= threshold else "false")]
            + [item.style.get(c, "") for c in style_columns]
            + [errors.get(item.path, "")]
        )
    write_csv_atomic(folder / "predictions.csv", ["file", "label", "probability", "watermark", *style_columns, "error"], rows)

    style_rows = []
    for attribute, table in (("family", result["per_style"]), *result["per_attribute"].items()):
        for value, row in table.items():
            style_rows.append(
                [attribute, value, row["n"], row["positives"], row["negatives"]]
                + ["" if row[k] is None else f"{row[k]:.6f}" for k in ("recall", "fpr", "mean_probability")]
            )
    write_csv_atomic(
        folder / "per_style.csv",
        ["attribute", "value", "n", "positives", "negatives", "recall", "fpr", "mean_probability"],
        style_rows,
    )

    files = ["metrics.json", "predictions.csv", "per_style.csv"]
    name = result["name"]
    _save_figure(confusion_figure(result, title=f"confusion matrix ({name})"), folder / "confusion_matrix.png")
    files.append("confusion_matrix.png")
    if both:
        fig = pr_curve_figure(labels, probs, threshold)
        fig.axes[0].set_title(f"precision-recall ({name})")
        _save_figure(fig, folder / "pr_curve.png")
        _save_figure(roc_curve_figure(labels, probs, threshold, title=f"ROC ({name})"), folder / "roc_curve.png")
        files += ["pr_curve.png", "roc_curve.png"]
    else:
        log.info("one class only: no PR or ROC curve")

    for kind, idx, total, what in (
        ("false_positives", fp_idx, result["fp"], "clean images scored >= threshold"),
        ("false_negatives", fn_idx, result["fn"], "watermarked images scored < threshold"),
    ):
        entries = [(scored[i].path, scored[i].file, float(probs[i]), scored[i].style.get(STYLE_KEY, "")) for i in idx[:SHEET_MAX]]
        label = kind.replace("_", " ")
        title = f"worst {label} ({name}): " + (f"{min(total, SHEET_MAX)} of {total} shown, most wrong first" if total else "none")
        sheet = contact_sheet(entries, title, f"{what} {threshold:.4f} ({result['threshold_rule']})")
        sheet.save(folder / f"worst_{kind}.png")
        files.append(f"worst_{kind}.png")
    return files


def summary_line(result: dict[str, Any]) -> str:
    def fmt(key: str) -> str:
        value = result.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"F1 {fmt('f1')} precision {fmt('precision')} recall {fmt('recall')} FPR {fmt('fpr')} "
        f"ROC-AUC {fmt('roc_auc')} at threshold {result['threshold']:.4f} | n {result['n']} "
        f"({result['positives']} positive, {result['negatives']} negative), skipped {result['skipped']}"
    )
