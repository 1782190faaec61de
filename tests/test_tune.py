"""Optuna tuning for real: tiny trials of the real training on a tiny dataset, a real SQLite
study storage and a real MLflow store in a temp dir; a real interruption (SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import mlflow
import optuna
import pytest

from tests.conftest import write_dataset
from train.cli import main as cli_main
from train.config import TrainConfig
from train.tune import DEFAULT_SPACE, TuneSettings, parse_space, space_to_json, tune

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]

# Trials train from Mixed_7b/7c on 75 px inputs with random weights: about a second each.
BASE = dict(
    weights="none", image_size=75, epochs=3, head_epochs=1, unfreeze_from="Mixed_7c", batch_size=8,
    progress=False, augment=0, patience=5, lr=1e-3,
)  # fmt: skip
SPACE = {
    "lr": {"low": 1e-6, "high": 3e-2, "log": True},
    "unfreeze_from": {"choices": ["Mixed_7b", "Mixed_7c"]},
    "dropout": {"low": 0.0, "high": 0.6},
}


def base_config(data: Path, out: Path, **overrides) -> TrainConfig:
    return TrainConfig(data=str(data), output=str(out), **{**BASE, **overrides})


def settings(tmp: Path, **overrides) -> TuneSettings:
    space = tmp / "space.json"
    space.write_text(json.dumps(SPACE))
    values = dict(
        n_trials=6, sampler_startup_trials=3, pruner_startup_trials=2, heartbeat_seconds=1, space_file=str(space),
    )  # fmt: skip
    return TuneSettings(**{**values, **overrides})


def study_of(out: Path, name: str = "watermark-tune") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'tune' / 'optuna.db'}")


def child_runs(out: Path, parent_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("watermark")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("tune") / "data", pairs=20)


@pytest.fixture(scope="module")
def study_run(data: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("study")
    out = tmp / "out"
    result = tune(base_config(data, out), settings(tmp))
    return {"tmp": tmp, "out": out, "result": result}


def test_study_prunes_and_nests_trials_under_one_parent_run(study_run) -> None:
    out, result = study_run["out"], study_run["result"]
    study = study_of(out)
    states = [t.state.name for t in study.trials]
    assert len(states) == 6 and set(states) <= {"COMPLETE", "PRUNED"}
    assert "PRUNED" in states, states  # the median pruner stopped weak trials early
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert all(len(t.intermediate_values) < 3 for t in pruned)
    assert study.trials[0].user_attrs["baseline"] is True  # trial 1 = the untuned default
    assert study.trials[0].params == {"lr": 1e-3, "unfreeze_from": "Mixed_7c", "dropout": 0.5}

    runs = child_runs(out, result.parent_run_id)
    assert len(runs) == 6
    by_trial = {int(r.data.tags["optuna.trial"]): r for r in runs}
    for trial in study.trials:
        run = by_trial[trial.number]
        assert run.info.status == ("FINISHED" if trial.state.name == "COMPLETE" else "KILLED")
        assert run.data.params["lr"] == str(trial.params["lr"])
        assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
    parent = mlflow.MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow' / 'mlflow.db').resolve()}").get_run(result.parent_run_id)
    assert parent.data.tags["best_trial"] == str(result.best_trial)
    assert parent.data.metrics["best_value"] == pytest.approx(result.best_value)

    trials_csv = (out / "tune" / "watermark-tune" / "trials.csv").read_text().splitlines()
    assert len(trials_csv) == 7 and trials_csv[0].startswith("number,state,value")
    # No trial checkpoints or exports pile up: trials keep their best weights in memory.
    assert not list((out / "tune").rglob("*.pt"))


def test_best_config_retrains_to_the_same_score(study_run) -> None:
    out, result = study_run["out"], study_run["result"]
    best_config = Path(result.best_config_path)
    values = json.loads(best_config.read_text())
    assert {k: values[k] for k in result.best_params} == result.best_params
    assert "output" not in values and "register" not in values

    retrain = study_run["tmp"] / "retrain"
    code = cli_main(["train", "--config", str(best_config), "--output", str(retrain), "--no-progress", "--no-export"])
    assert code == 0
    report = json.loads((retrain / "reports" / "metrics.json").read_text())
    assert report["best_score"] == pytest.approx(result.best_value, abs=1e-9)


def test_rerun_of_a_finished_study_runs_nothing_new(study_run, data: Path) -> None:
    before = len(study_of(study_run["out"]).trials)
    again = tune(base_config(data, study_run["out"]), settings(study_run["tmp"]))
    assert len(study_of(study_run["out"]).trials) == before
    assert again.parent_run_id == study_run["result"].parent_run_id
    assert again.best_trial == study_run["result"].best_trial


def _tune_command(data: Path, out: Path, space: Path, n_trials: int) -> list[str]:
    return [
        sys.executable, "-m", "train", "tune", "--data", str(data), "--output", str(out), "--weights", "none",
        "--image-size", "75", "--epochs", "3", "--unfreeze-from", "Mixed_7c", "--batch-size", "8", "--augment", "0",
        "--no-progress", "--space", str(space), "--n-trials", str(n_trials), "--heartbeat", "1",
        "--startup-trials", "3", "--pruner-startup-trials", "2",
    ]  # fmt: skip


def test_killed_study_resumes_and_loses_no_finished_trial(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    proc = subprocess.Popen(
        _tune_command(data, out, space, 4), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(180, lambda: os.killpg(proc.pid, signal.SIGKILL))
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "trial 2/4 epoch 1/3" in line:  # trial 2 is half done
                os.killpg(proc.pid, signal.SIGKILL)
                break
    finally:
        watchdog.cancel()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])
    study = study_of(out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "RUNNING"]
    first_value = study.trials[0].value
    killed_params = study.trials[1].params

    time.sleep(2.5)  # the heartbeat (1 s) goes stale after its 2 s grace period
    base = base_config(data, out)
    result = tune(base, settings(tmp_path, n_trials=4, space_file=str(space)))

    study = study_of(out)
    trials = study.trials
    assert trials[0].state.name == "COMPLETE" and trials[0].value == first_value  # kept, not re-run
    assert trials[1].state.name == "FAIL"
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 1]
    assert len(retried) == 1 and retried[0].params == killed_params  # the killed trial ran again
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    statuses = sorted(r.info.status for r in child_runs(out, result.parent_run_id))
    assert "RUNNING" not in statuses and statuses.count("FAILED") == 1  # the killed trial's run is closed


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"learning_rate": {"low": 1e-4, "high": 1e-2}}, "unknown parameter 'learning_rate'; tunable are"),
        ({"lr": {"low": 1e-2, "high": 1e-4}}, "lr: invalid range low=0.01 >= high=0.0001"),
        ({"lr": {"low": 0, "high": 1e-2, "log": True}}, "a log range needs low > 0"),
        ({"batch_size": {"choices": [0, 8]}}, "batch_size: value 0 is not a valid training option (--batch-size 0: must be >= 1)"),
        ({"unfreeze_from": {"choices": ["Mixed_9z"]}}, "block 'Mixed_9z': allowed are"),
        ({"data": {"choices": ["x"]}}, "unknown parameter 'data'"),
        ({"lr": {"low": 1e-4, "high": 1e-2, "step": 2}}, "unknown keys ['step']"),
        ([], "expected a non-empty JSON object"),
    ],
)
def test_bad_space_fails_before_any_trial(data: Path, tmp_path: Path, space, message: str, capsys) -> None:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    out = tmp_path / "out"
    code = cli_main(["tune", "--data", str(data), "--output", str(out), "--weights", "none", "--image-size", "75", "--unfreeze-from", "Mixed_7c", "--space", str(path)])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err
    assert not out.exists()  # no storage, no MLflow store, no trial


def test_unreachable_storage_and_tracking_fail_before_any_trial(data: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = tmp_path / "out"
    common = ["tune", "--data", str(data), "--output", str(out), "--weights", "none", "--image-size", "75", "--unfreeze-from", "Mixed_7c", "--aux-weight", "0"]

    assert cli_main([*common, "--storage", f"sqlite:///{blocker}/optuna.db"]) == 2
    err = capsys.readouterr().err
    assert f"--storage sqlite:///{blocker}/optuna.db: cannot open the study storage" in err

    assert cli_main([*common, "--storage", "postgresql://tuner@127.0.0.1:1/optuna"]) == 2
    assert "--storage postgresql://tuner@127.0.0.1:1/optuna: cannot open the study storage" in capsys.readouterr().err

    started = time.monotonic()
    assert cli_main([*common, "--tracking-uri", "http://127.0.0.1:1"]) == 2
    assert "--tracking-uri http://127.0.0.1:1: cannot reach the MLflow store" in capsys.readouterr().err
    assert time.monotonic() - started < 60  # one quick request, not minutes of retries
    assert not (out / "tune" / "watermark-tune" / "trials").exists()


def test_default_space_covers_the_issue_and_is_valid(data: Path, tmp_path: Path) -> None:
    names = {d.name for d in DEFAULT_SPACE}
    assert {"lr", "weight_decay", "batch_size", "unfreeze_from", "augment", "dropout", "pos_weight"} <= names
    full = TrainConfig(data=str(data), output=str(tmp_path))
    assert parse_space(space_to_json(DEFAULT_SPACE), full) == DEFAULT_SPACE
    with pytest.raises(ValueError, match="--n-trials 0"):
        tune(replace(full), TuneSettings(n_trials=0))


def test_optuna_dashboard_reads_the_study_storage(study_run) -> None:
    """The README's dashboard command works against the embedded storage (loopback only)."""
    import requests

    from tests.serving_fixtures import free_port

    dashboard = Path(sys.executable).parent / "optuna-dashboard"
    if not dashboard.exists():
        pytest.skip("optuna-dashboard is not installed in this environment")
    port = free_port()
    storage = f"sqlite:///{study_run['out'] / 'tune' / 'optuna.db'}"
    proc = subprocess.Popen(
        [str(dashboard), storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        studies = None
        while time.monotonic() < deadline and studies is None:
            try:
                studies = requests.get(f"http://127.0.0.1:{port}/api/studies", timeout=2).json()["study_summaries"]
            except requests.ConnectionError:
                time.sleep(0.3)
        assert studies is not None, "optuna-dashboard did not answer within 30 s"
        assert [s["study_name"] for s in studies] == ["watermark-tune"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
