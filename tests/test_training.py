"""Training run end to end on a tiny dataset: MLflow store, checkpoints, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from train.cli import main as cli_main
from train.export import load_export
from train.train import TrainConfig, train

TINY = dict(
    weights="none", image_size=75, epochs=2, head_epochs=1, unfreeze_from="Mixed_7c",
    batch_size=8, progress=False, augment=False, patience=5, lr=1e-3,
)


def tiny_config(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(out), **{**TINY, **overrides})


def test_train_logs_checkpoints_and_exports(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = train(tiny_config(tiny_dataset, out))

    assert result.epochs_run == 2
    assert 0.0 < result.threshold["threshold"] < 1.0
    assert result.threshold["rule"] == "target-fpr"
    assert (out / "checkpoints" / "best.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()
    model, spec, threshold = load_export(out / "export")
    assert spec.image_size == 75 and spec.mean == (0.5, 0.5, 0.5)
    assert threshold == result.threshold
    logits = model(torch.zeros(3, 3, 75, 75))
    assert logits.shape == (3, 1)

    mlflow.set_tracking_uri(f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}")
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["weights"] == "none"
    for name in ("train_loss", "val_loss", "val_accuracy", "val_precision", "val_recall", "val_f1", "val_roc_auc"):
        assert len(client.get_metric_history(result.run_id, name)) == 2, name
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/pr_curve.png"} <= artifacts
    exported = {a.path for a in client.list_artifacts(result.run_id, "export")}
    assert "export/model.pt" in exported and "export/threshold.json" in exported
    report = json.loads((out / "reports" / "metrics.json").read_text())
    assert report["threshold"]["rule"] == "target-fpr"


def test_resume_continues_the_same_run(tiny_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = train(tiny_config(tiny_dataset, out, epochs=1, export=False))
    resumed = train(tiny_config(tiny_dataset, out, epochs=2, resume=True, export=False))
    assert resumed.run_id == first.run_id
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    with pytest.raises(ValueError, match="image_size"):
        train(tiny_config(tiny_dataset, out, epochs=3, resume=True, image_size=80, export=False))


def test_cached_and_uncached_training_agree(tiny_dataset: Path, tmp_path: Path) -> None:
    cached = train(tiny_config(tiny_dataset, tmp_path / "a", cache=True, export=False))
    plain = train(tiny_config(tiny_dataset, tmp_path / "b", cache=False, export=False))
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["model"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, worst
    assert cached.history[-1]["train_loss"] == pytest.approx(plain.history[-1]["train_loss"], abs=1e-5)
    assert list((tmp_path / "a" / "cache").glob("*.pt"))


def test_unreadable_files_are_skipped_and_listed(tiny_dataset: Path, tmp_path: Path) -> None:
    (tiny_dataset / "train" / "positive" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tiny_dataset / "train" / "negative" / "notes.txt").write_text("hello")
    out = tmp_path / "out"
    train(tiny_config(tiny_dataset, out, epochs=1, head_epochs=1, export=False))
    report = (out / "reports" / "skipped.csv").read_text()
    assert "broken.jpg" in report and "notes.txt" in report


def test_cli_reports_bad_options_clearly(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["train", "--data", str(tiny_dataset), "--output", str(tmp_path / "o"), "--weights", "nope"])
    assert code == 2
    assert "nope" in capsys.readouterr().err
    code = cli_main(["train", "--data", str(tmp_path / "missing")])
    assert code == 2
    assert "missing" in capsys.readouterr().err
    code = cli_main(["train", "--data", str(tiny_dataset), "--epochs", "0"])
    assert code == 2
    assert "--epochs 0" in capsys.readouterr().err


def test_overlay_negatives_adds_paired_synthetic_positives(tiny_dataset: Path, tmp_path: Path) -> None:
    from train.data import load_splits
    from train.overlay import overlay_negatives

    splits = load_splits(tiny_dataset, val_fraction=0.2, seed=0)
    made = overlay_negatives(splits.train, tmp_path / "ov", copies=2, seed=0)
    negatives = [s for s in splits.train if s.label == 0]
    assert len(made) == 2 * len(negatives) and all(s.label == 1 for s in made)
    assert sorted({s.group for s in made}) == sorted({s.group for s in negatives})
    again = overlay_negatives(splits.train, tmp_path / "ov", copies=2, seed=0)
    assert [s.path for s in again] == [s.path for s in made]  # reused, deterministic
    with pytest.raises(ValueError, match="overlay-negatives -1"):
        overlay_negatives(splits.train, tmp_path / "ov", copies=-1, seed=0)

    out = tmp_path / "out"
    train(tiny_config(tiny_dataset, out, epochs=1, overlay_negatives=1, export=False))
    counts = json.loads((out / "reports" / "metrics.json").read_text())["counts"]
    assert counts["train_positive"] == 2 * counts["train_negative"]
