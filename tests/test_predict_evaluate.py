"""Batch prediction and evaluation from an export bundle (train/predict.py, train/evaluate.py).

A tiny fully convolutional model (conv -> adaptive max pool -> linear) whose logit grows
with image brightness stands in for Inception V3: bright images are "watermarked".
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from handler.preprocess import PreprocessSpec, image_to_tensor, load_image_file, sigmoid
from train.cli import main
from train.evaluate import evaluate_folder
from train.export import export_model
from train.predict import predict_folder, score_files

SIZE = 75
THRESHOLD = 0.5


class BrightNet(nn.Module):
    """logit = 6 x (brightest 3x3 mean in [-1, 1]) - 0.3: bright -> positive."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1 / 27)
            self.conv.bias.zero_()
            self.fc.weight.fill_(6.0)
            self.fc.bias.fill_(-0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.conv(x)).flatten(1))


class FixedSizeNet(nn.Module):
    """Not fully convolutional: only accepts SIZE x SIZE inputs (for the TTA fallback)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * SIZE * SIZE, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], 3 * SIZE * SIZE))


def _image(level: int, seed: int, size: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(level + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


# file (relative to the labelled folder), brightness level; positives bright, negatives dark,
# except one mislabelled of each kind (a false negative and a false positive)
LABELLED = {
    "positive/p0.jpg": 230,
    "positive/p1.jpg": 205,
    "positive/p2.png": 180,
    "positive/sub/p3.jpg": 160,
    "positive/p_dark.jpg": 50,  # false negative
    "negative/n0.jpg": 20,
    "negative/n1.png": 45,
    "negative/n2.jpg": 70,
    "negative/n3.jpg": 95,
    "negative/n_bright.jpg": 215,  # false positive
}
STYLES = {
    "positive/p0.jpg": "corner_text",
    "positive/p1.jpg": "corner_text",
    "positive/p2.png": "tiled_text",
    "positive/sub/p3.jpg": "tiled_text",
    "positive/p_dark.jpg": "corner_text",
    "negative/n_bright.jpg": "scene_text",
}
CORRUPT = "negative/broken.jpg"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "export"
    export_model(BrightNet(), PreprocessSpec(image_size=SIZE), {"threshold": THRESHOLD, "rule": "max-f1"}, out)
    return out


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("labelled") / "heldout_styles"
    for n, (rel, level) in enumerate(LABELLED.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        _image(level, n).save(path)
    (root / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "negative" / "notes.txt").write_text("not an image\n")
    with (root / "styles.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "family", "font"])
        for rel in LABELLED:
            writer.writerow([rel, int(rel.startswith("positive")), STYLES.get(rel, ""), "vazir" if rel in STYLES else ""])
    return root


def _reference_probability(path: Path) -> float:
    """Independent path: the serving preprocessing + the eager model + the handler's sigmoid."""
    model = BrightNet().eval()
    with torch.no_grad():
        logit = model(image_to_tensor(load_image_file(path), PreprocessSpec(image_size=SIZE))[None])
    return sigmoid(float(logit))


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _is_png(path: Path) -> bool:
    with Image.open(path) as image:
        image.verify()
        return image.format == "PNG"


# ------------------------------------------------------------------ predict


def test_predict_folder_writes_sorted_csv_with_serving_probabilities(export_dir, labelled, tmp_path):
    out = tmp_path / "predictions.csv"
    summary = predict_folder(export_dir, labelled, out, progress=False)

    rows = _read_csv(out)
    assert list(rows[0]) == ["file", "probability", "watermark", "error"]
    files = [r["file"] for r in rows]
    assert files == sorted([*LABELLED, CORRUPT])  # recursive, relative, sorted; .txt and styles.csv ignored
    by_file = {r["file"]: r for r in rows}
    for rel in LABELLED:
        row = by_file[rel]
        expected = _reference_probability(labelled / rel)
        assert float(row["probability"]) == pytest.approx(expected, abs=6e-7)
        assert row["watermark"] == ("true" if expected >= THRESHOLD else "false")
        assert row["error"] == ""
    broken = by_file[CORRUPT]
    assert broken["probability"] == "" and broken["watermark"] == ""
    assert "broken.jpg" in broken["error"] and "not a decodable image" in broken["error"]
    assert summary["images"] == len(LABELLED) + 1
    assert summary["scored"] == len(LABELLED)
    assert summary["skipped"] == 1 and summary["skipped_files"][0]["file"] == CORRUPT
    assert summary["watermarked"] == 5  # four bright positives + the bright negative
    assert summary["ignored_files"] == 2  # notes.txt, styles.csv
    assert not [p for p in tmp_path.iterdir() if p.name != "predictions.csv"]  # no temp file left


def test_predict_refuses_existing_csv_without_overwrite(export_dir, labelled, tmp_path):
    out = tmp_path / "predictions.csv"
    out.write_text("keep me\n")
    with pytest.raises(FileExistsError, match=r"predictions\.csv.*--overwrite"):
        predict_folder(export_dir, labelled, out, progress=False)
    assert out.read_text() == "keep me\n"
    predict_folder(export_dir, labelled, out, overwrite=True, progress=False)
    assert out.read_text().startswith("file,probability,watermark,error")


def test_predict_missing_folder_or_no_images(export_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        predict_folder(export_dir, tmp_path / "nope", tmp_path / "p.csv", progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no image files.*1 other file"):
        predict_folder(export_dir, tmp_path / "empty", tmp_path / "p.csv", progress=False)
    assert not (tmp_path / "p.csv").exists()


def test_score_files_tta_keeps_shape_and_errors(export_dir, labelled):
    from train.export import load_export

    model, spec, _ = load_export(export_dir)
    paths = [labelled / rel for rel in LABELLED] + [labelled / CORRUPT]
    plain, errors = score_files(model, spec, paths, batch_size=3, progress=False)
    tta, tta_errors = score_files(model, spec, paths, batch_size=3, tta=True, progress=False)
    assert plain.shape == tta.shape == (len(paths),)
    assert np.array_equal(np.isnan(plain), np.isnan(tta)) and np.isnan(plain[-1])
    assert set(errors) == set(tta_errors) == {labelled / CORRUPT}
    # brightness is mirror-invariant and nearly scale-invariant: same verdicts
    ok = ~np.isnan(plain)
    assert np.array_equal(plain[ok] >= THRESHOLD, tta[ok] >= THRESHOLD)
    assert np.max(np.abs(plain[ok] - tta[ok])) < 0.05


def test_tta_falls_back_to_mirror_when_model_is_size_bound(tmp_path, labelled):
    from train.export import load_export

    out = tmp_path / "fixed"
    export_model(FixedSizeNet(), PreprocessSpec(image_size=SIZE), {"threshold": 0.5, "rule": "manual"}, out)
    model, spec, _ = load_export(out)
    paths = [labelled / "positive/p0.jpg", labelled / "negative/n0.jpg"]
    with pytest.warns(RuntimeWarning, match="original and mirrored views only"):
        probs, errors = score_files(model, spec, paths, tta=True, progress=False)
    assert probs.shape == (2,) and not np.isnan(probs).any() and not errors


# ------------------------------------------------------------------ evaluate


def _manual_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = probs >= THRESHOLD
    tp, fp = int(np.sum(pred & (labels == 1))), int(np.sum(pred & (labels == 0)))
    fn, tn = int(np.sum(~pred & (labels == 1))), int(np.sum(~pred & (labels == 0)))
    pos, neg = probs[labels == 1], probs[labels == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p in pos for n in neg]  # Mann-Whitney AUC
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall),
        "fpr": fp / (fp + tn),
        "roc_auc": sum(pairs) / len(pairs),
    }


def test_evaluate_folder_metrics_outputs_and_styles(export_dir, labelled, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_folder(export_dir, labelled, out, progress=False)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == len(LABELLED) and metrics["positives"] == 5 and metrics["negatives"] == 5
    assert metrics["skipped"] == 1 and metrics["skipped_files"][0]["file"] == CORRUPT
    assert "not a decodable image" in metrics["skipped_files"][0]["error"]
    assert metrics["threshold"] == THRESHOLD and metrics["threshold_rule"] == "max-f1"

    rows = _read_csv(out / "predictions.csv")
    assert list(rows[0])[:5] == ["file", "label", "probability", "watermark", "family"]
    assert "font" in rows[0] and list(rows[0])[-1] == "error"
    scored = [r for r in rows if not r["error"]]
    labels = np.array([int(r["label"]) for r in scored])
    probs = np.array([_reference_probability(labelled / r["file"]) for r in scored])
    expected = _manual_metrics(labels, probs)
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    assert (expected["fp"], expected["fn"]) == (1, 1)
    assert 0 < metrics["average_precision"] <= 1
    assert result["f1"] == metrics["f1"]

    # per-style breakdown from styles.csv: recall for positives, FPR for negatives
    per_style = metrics["per_style"]
    assert per_style["corner_text"] == pytest.approx(
        {"n": 3, "positives": 3, "negatives": 0, "recall": 2 / 3, "fpr": None, "mean_probability": per_style["corner_text"]["mean_probability"]}
    )
    assert per_style["tiled_text"]["recall"] == 1.0
    assert per_style["scene_text"]["fpr"] == 1.0 and per_style["scene_text"]["recall"] is None
    assert per_style["(none)"]["n"] == 4 and per_style["(none)"]["fpr"] == 0.0
    assert set(metrics["per_attribute"]["font"]) == {"vazir", "(none)"}
    style_rows = _read_csv(out / "per_style.csv")
    assert {(r["attribute"], r["value"]) for r in style_rows} >= {("family", "corner_text"), ("font", "vazir")}

    # worst errors and figures
    assert [e["file"] for e in metrics["worst_false_positives"]] == ["negative/n_bright.jpg"]
    assert [e["file"] for e in metrics["worst_false_negatives"]] == ["positive/p_dark.jpg"]
    for name in ("confusion_matrix", "pr_curve", "roc_curve", "worst_false_positives", "worst_false_negatives"):
        assert _is_png(out / f"{name}.png"), name
    with Image.open(out / "worst_false_positives.png") as sheet:
        assert sheet.width >= 160 and sheet.height >= 160  # one thumbnail plus captions
    assert sorted(metrics["files"]) == sorted(p.name for p in out.iterdir())
    assert not [p for p in tmp_path.iterdir() if p.name != "eval"]  # staging folder renamed away


def test_evaluate_negatives_only_reports_fpr_and_nulls(export_dir, tmp_path):
    data = tmp_path / "hard_negatives"
    (data / "negative").mkdir(parents=True)
    for n, level in enumerate((30, 60, 90, 220)):
        _image(level, n).save(data / "negative" / f"h{n}.jpg")
    out = tmp_path / "eval"
    evaluate_folder(export_dir, data, out, progress=False)

    text = (out / "metrics.json").read_text()
    assert "NaN" not in text
    metrics = json.loads(text)
    assert metrics["positives"] == 0 and metrics["negatives"] == 4
    assert metrics["fpr"] == 0.25 and metrics["fp"] == 1
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1"):
        assert metrics[key] is None, key
    assert not (out / "pr_curve.png").exists() and not (out / "roc_curve.png").exists()
    assert _is_png(out / "confusion_matrix.png") and _is_png(out / "worst_false_negatives.png")  # the "none" sheet


def test_evaluate_with_labels_csv(export_dir, labelled, tmp_path):
    data = tmp_path / "test"
    data.mkdir()
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "label", "family", "placement", "base_photo"])
        for n, (rel, level) in enumerate(LABELLED.items()):
            name = f"img_{n:02d}.jpg"
            _image(level, n).save(data / name)
            label = ("positive" if n % 2 else "1") if rel.startswith("positive") else ("negative" if n % 2 else "0")
            writer.writerow([name, label, STYLES.get(rel, "") if rel.startswith("positive") else "", "corner" if n < 3 else "centre", "p"])
        writer.writerow(["missing.jpg", "0", "", "", ""])
    _image(128, 99).save(data / "unlisted.jpg")

    result = evaluate_folder(export_dir, data, tmp_path / "eval", labels_csv=tmp_path / "labels.csv", progress=False)
    assert result["positives"] == 5 and result["negatives"] == 5 and result["n"] == 10
    assert result["skipped"] == 1 and result["skipped_files"][0]["file"] == "missing.jpg"
    assert result["ignored_files"] == 1  # unlisted.jpg
    assert (result["fp"], result["fn"]) == (1, 1)
    assert result["per_style"]["corner_text"]["recall"] == pytest.approx(2 / 3)
    assert set(result["per_attribute"]["placement"]) == {"corner", "centre"}
    header = _read_csv(tmp_path / "eval" / "predictions.csv")[0]
    assert list(header) == ["file", "label", "probability", "watermark", "family", "placement", "base_photo", "error"]

    (tmp_path / "bad.csv").write_text("file,label\nimg_00.jpg,maybe\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2: label 'maybe'"):
        evaluate_folder(export_dir, data, tmp_path / "eval2", labels_csv=tmp_path / "bad.csv", progress=False)


def test_evaluate_refuses_existing_out_dir(export_dir, labelled, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"eval.*--overwrite"):
        evaluate_folder(export_dir, labelled, out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    evaluate_folder(export_dir, labelled, out, overwrite=True, progress=False)
    assert (out / "metrics.json").is_file() and not (out / "keep.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]
    with pytest.raises(ValueError, match="would replace --data"):
        evaluate_folder(export_dir, labelled, labelled, overwrite=True, progress=False)


def test_evaluate_logs_into_existing_mlflow_run(export_dir, labelled, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("wm", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    client.set_terminated(run_id)

    result = evaluate_folder(
        export_dir, labelled, tmp_path / "eval", progress=False, mlflow_run_id=run_id, tracking_uri=uri
    )
    run = client.get_run(run_id)
    assert run.data.metrics["eval_heldout_styles_f1"] == pytest.approx(result["f1"])
    assert run.data.metrics["eval_heldout_styles_fpr"] == pytest.approx(result["fpr"])
    assert run.data.metrics["eval_heldout_styles_style_corner_text_recall"] == pytest.approx(2 / 3)
    assert run.info.status == "FINISHED"  # the finished training run is not reopened
    logged = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation/heldout_styles")}
    assert {"metrics.json", "predictions.csv", "per_style.csv", "roc_curve.png", "worst_false_positives.png"} <= logged
    assert mlflow.active_run() is None

    with pytest.raises(ValueError, match="no such run"):
        evaluate_folder(export_dir, labelled, tmp_path / "eval2", progress=False, mlflow_run_id="0" * 32, tracking_uri=uri)
    assert not (tmp_path / "eval2").exists()  # refused before any scoring or writing


# ------------------------------------------------------------------ CLI


def test_cli_predict_and_evaluate(export_dir, labelled, tmp_path, capsys):
    out_csv = tmp_path / "p.csv"
    args = ["predict", "--export", str(export_dir), "--input", str(labelled), "--out", str(out_csv), "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert "10 images scored, 5 watermarked, 1 skipped" in line and str(out_csv) in line
    assert main([*args, "--tta", "--overwrite", "--batch-size", "3"]) == 0
    assert "10 images scored, 5 watermarked, 1 skipped (threshold 0.5000, TTA)" in capsys.readouterr().out

    out_dir = tmp_path / "e"
    args = ["evaluate", "--export", str(export_dir), "--data", str(labelled), "--out", str(out_dir), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "F1 0.800 precision 0.800 recall 0.800 FPR 0.200 ROC-AUC" in printed and "skipped 1" in printed
    assert str(out_dir) in printed

    assert main(args) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_cli_errors_are_exit_code_2(export_dir, labelled, tmp_path, capsys):
    missing = tmp_path / "no_export"
    assert main(["predict", "--export", str(missing), "--input", str(labelled), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.pt: missing" in err
    assert main(["evaluate", "--export", str(export_dir), "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e")]) == 2
    assert "--data" in capsys.readouterr().err and not (tmp_path / "e").exists()
    assert main(["evaluate", "--export", str(export_dir), "--data", str(tmp_path), "--out", str(tmp_path / "e")]) == 2
    assert "--labels" in capsys.readouterr().err
