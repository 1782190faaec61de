"""`make train-real` (scripts/train_real.sh) end to end on a tiny generated dataset.

The real recipe reads ../shared/digikala; this test never does: it points DATA at a tiny
folder and RECIPE at a tiny recipe, and checks every step runs and lands where the README
says (held-out list, registry, archive, evaluations, test predictions, summary).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_photo, write_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_real.sh"
TINY_RECIPE = {
    "weights": "none", "image_size": 75, "unfreeze_from": "Mixed_7c", "epochs": 1, "head_epochs": 0,
    "batch_size": 8, "augment": 0, "val_fraction": 0.25, "holdout_fraction": 0.25, "lr_schedule": "cosine",
    "overlay_negatives": 0.5, "holdout_curve": True,
}


def _env(tmp_path: Path, data: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        DATA=str(data), OUT=str(tmp_path / "out"), MODEL_STORE=str(tmp_path / "store"), DEMO_DATA=str(tmp_path / "demo"),
        REAL_SAMPLES=str(tmp_path / "no-real-samples"), **extra,
    )
    return env


def test_missing_data_folder_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=_env(tmp_path, tmp_path / "absent"), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"{tmp_path / 'absent'}/train/positive and" in proc.stderr and "make demo" in proc.stderr


@pytest.mark.integration
def test_train_real_runs_every_step_on_a_tiny_dataset(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "data", pairs=16)
    (data / "test").mkdir()
    for i in range(3):
        make_photo(500 + i, 96).save(data / "test" / f"t{i}.jpg")
    hard = tmp_path / "demo" / "eval" / "hard_negatives" / "negative"
    hard.mkdir(parents=True)
    for i in range(2):
        make_photo(700 + i, 96).save(hard / f"h{i}.jpg")
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(TINY_RECIPE))
    relabel = tmp_path / "relabel.csv"
    relabel.write_text("file,label,reason\nnegative/img_003.jpg,positive,a mark found on review\n", encoding="utf-8")

    proc = subprocess.run(
        ["bash", str(SCRIPT)], env=_env(tmp_path, data, RECIPE=str(recipe), VERSION="2.1", RELABEL=str(relabel)), capture_output=True,
        text=True, timeout=600, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    with (out / "reports" / "holdout.csv").open() as handle:
        holdout = list(csv.DictReader(handle))
    assert holdout and {r["label"] for r in holdout} == {"0", "1"}
    assert all((data / "train" / r["file"]).is_file() for r in holdout)
    assert (tmp_path / "store" / "watermark.mar").is_file()
    with (out / "reports" / "val.csv").open() as handle:
        val = list(csv.DictReader(handle))
    assert val and not {r["file"] for r in val} & {r["file"] for r in holdout}
    # the int8 model was checked on the held-out split; the archive holds it only if it passed
    assert "2/6 int8 model, checked on the held-out split" in proc.stdout
    int8 = json.loads((out / "export" / "model_info.json").read_text())["int8"]
    assert int8["check_images"] == len(holdout) and int8["validation_images"] == len(val)
    with zipfile.ZipFile(tmp_path / "store" / "watermark.mar") as mar:
        packed = {"model.int8.onnx", "model.pt"} & set(mar.namelist())
    assert packed == ({"model.int8.onnx"} if int8["passed"] else {"model.pt"}), int8
    if not int8["passed"]:
        assert "no int8 model (see above" in proc.stderr
    assert f"int8 model (export-int8) on the {len(holdout)} held-out photos" in (out / "summary.md").read_text()
    holdout_eval = json.loads((out / "eval" / "holdout" / "metrics.json").read_text())
    assert holdout_eval["n"] == len(holdout)
    assert (out / "eval" / "holdout" / "worst_false_positives.png").is_file()
    assert json.loads((out / "eval" / "hard_negatives" / "metrics.json").read_text())["negatives"] == 2
    assert "heldout_styles not found: skipped" in proc.stdout
    with (out / "test_predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    summary = (out / "summary.md").read_text()
    assert "| holdout: held-out real photos" in summary and "predicted watermarked: " in summary
    history = json.loads((out / "reports" / "metrics.json").read_text())["history"]
    assert {"holdout_f1", "holdout_fpr", "holdout_roc_auc", "elapsed_seconds"} <= set(history[0])
    with (out / "reports" / "relabelled.csv").open() as handle:
        assert [r["file"] for r in csv.DictReader(handle)] == ["negative/img_003.jpg"]
    assert "| relabelled | 1 file by the run's relabel file" in summary
    assert "| held-out F1 |" in summary and "never used to pick the epoch or the threshold" in summary
    assert "registered watermark version 1" in proc.stdout + proc.stderr
