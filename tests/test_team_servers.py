"""Past one machine, for real: a team's PostgreSQL and ``mlflow server``.

* One Optuna study on a real PostgreSQL shared by several ``python -m train tune``
  processes, with a real ``mlflow server`` (PostgreSQL backend, local artifact root) as the
  tracking store; a worker killed with SIGKILL mid-trial; the database stopped mid-study.
  Each worker has its own --output, as separate machines would; they share only the
  database and the tracking server.
* Training, figures, the registry and its aliases through the tracking server, and
  ``create_mar.sh --from-registry`` building an archive from it.

Servers are started and stopped here, on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest

from tests import serving_fixtures as sf
from tests.conftest import write_dataset
from tests.mlflow_server import MlflowServer
from tests.pg_server import PASSWORD, PostgresServer, postgres_bin
from tests.test_training import tiny_config
from tests.test_tune import REPO, SPACE, _tune_command
from tests.ts_server import create_mar
from train import registry
from train.cli import main as cli_main
from train.training import run_training

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed: run scripts/setup_test_system.sh"),
]
WORKER_TIMEOUT = 300


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A PostgreSQL with an ``optuna`` and an ``mlflow`` database, and an MLflow server on the latter."""
    pg = PostgresServer()
    tracking = None
    try:
        pg.start()
        pg.create_database("optuna")
        pg.create_database("mlflow")
        tracking = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), pg.url("mlflow"))
        tracking.start()
        yield {"pg": pg, "storage": pg.url("optuna"), "tracking": tracking}
    finally:
        if tracking is not None:
            tracking.stop()
        pg.cleanup()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("shared") / "data", pairs=20)


class Worker:
    """One ``python -m train tune`` process; its output is collected line by line."""

    def __init__(self, command: list[str]) -> None:
        self.proc = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.watchdog = threading.Timer(WORKER_TIMEOUT, self.kill)
        self.watchdog.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.seen:
                self.lines.append(line)
                self.seen.notify_all()

    def wait_for(self, *texts: str, timeout: float = 120) -> None:
        """Until a line contains one of ``texts``."""
        deadline = time.monotonic() + timeout
        with self.seen:
            while not any(text in line for line in self.lines for text in texts):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"worker never printed {texts!r}:\n{self.output[-3000:]}")
                self.seen.wait(min(left, 1.0))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def finish(self, timeout: float = WORKER_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.watchdog.cancel()
            self.reader.join(timeout=10)

    @property
    def output(self) -> str:
        return "".join(self.lines)


def start_worker(data: Path, out: Path, space: Path, n_trials: int, storage: str, tracking: str, study: str) -> Worker:
    command = [*_tune_command(data, out, space, n_trials), "--storage", storage, "--tracking-uri", tracking, "--study-name", study]
    return Worker(command)


def space_file(tmp: Path) -> Path:
    path = tmp / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def trial_runs(tracking: str, parent_id: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name("watermark")
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_two_workers_split_one_study_on_postgresql(servers, data: Path, tmp_path: Path) -> None:
    space = space_file(tmp_path)
    storage, tracking = servers["storage"], servers["tracking"].uri
    workers = [start_worker(data, tmp_path / f"machine{i}", space, 8, storage, tracking, "split") for i in range(2)]
    codes = [w.finish() for w in workers]
    assert codes == [0, 0], "\n\n".join(w.output[-3000:] for w in workers)

    study = optuna.load_study(study_name="split", storage=storage)
    trials = study.trials
    states = Counter(t.state.name for t in trials)
    finished = states["COMPLETE"] + states["PRUNED"]
    # A worker claims a trial only while fewer than 8 are finished or running; two asking
    # at the same instant may make one extra.
    assert 8 <= finished <= 9 and set(states) <= {"COMPLETE", "PRUNED"}, states  # pruned or not depends on the scores
    by_worker = Counter(t.user_attrs["worker"] for t in trials)
    assert len(by_worker) == 2, by_worker  # both workers took a share
    for worker in workers:
        host_pid = f":{worker.proc.pid}"
        assert any(w.endswith(host_pid) for w in by_worker)
    # No trial was run twice: every trial's options are its own.
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert len(set(params)) == len(params)

    # One parent run; every trial of both workers is a nested run under it, once.
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    runs = trial_runs(tracking, parent_id)
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == [t.number for t in trials]
    for run in runs:
        trial = trials[int(run.data.tags["optuna.trial"])]
        assert run.data.tags["optuna.worker"] == trial.user_attrs["worker"]
        assert run.info.status == ("FINISHED" if trial.state.name == "COMPLETE" else "KILLED")
    client = mlflow.MlflowClient(tracking_uri=tracking)
    parents = client.search_runs(
        [client.get_experiment_by_name("watermark").experiment_id], filter_string="tags.`optuna.study` = 'split' and tags.kind = 'tuning'"
    )
    assert [p.info.run_id for p in parents] == [parent_id]
    parent = parents[0]
    assert parent.data.tags["optuna.storage"].startswith("postgresql://tuner:***@127.0.0.1:")
    # The database password appears nowhere: not in MLflow, the workers' output or trials.csv.
    everything = json.dumps([parent.data.tags, parent.data.params]) + "".join(w.output for w in workers)
    everything += "".join((tmp_path / f"machine{i}" / "tune" / "split" / "trials.csv").read_text() for i in range(2))
    assert PASSWORD not in everything
    assert all("run by this worker" in w.output for w in workers)


def test_a_joining_worker_prunes_against_the_other_workers_trials(servers, data: Path, tmp_path: Path) -> None:
    """Deterministic: the study and pruner as ``tune`` opens them, two workers' handles on
    one database; the second worker has no finished trial of its own, so it can only prune
    by the first worker's."""
    from train.config import TrainConfig
    from train.tune import TuneSettings, load_space, open_storage, open_study

    base = TrainConfig(data=str(data), output=str(tmp_path), head_epochs=1, epochs=3)
    settings = TuneSettings(study_name="pruning", pruner_startup_trials=2, baseline=False, heartbeat_seconds=5)
    space = load_space(None, base)
    storage_url = servers["storage"]
    first, created = open_study(base, settings, space, open_storage(storage_url, 5), storage_url)
    second, joined = open_study(base, settings, space, open_storage(storage_url, 5), storage_url)
    assert (created, joined) == (True, False)
    for _ in range(2):  # the first worker finishes two trials that score 0.9 at every epoch
        trial = first.ask()
        for step in (1, 2, 3):
            trial.report(0.9, step)
        first.tell(trial, 0.9)
    weak = second.ask()
    weak.report(0.2, 1)
    assert not weak.should_prune()  # epoch 1 trains only the head: too early to prune (warm-up)
    weak.report(0.2, 2)
    assert weak.should_prune()
    strong = second.ask()
    strong.report(0.95, 2)
    assert not strong.should_prune()


def test_killed_worker_trial_is_failed_and_retried_by_the_other(servers, data: Path, tmp_path: Path) -> None:
    space = space_file(tmp_path)
    storage, tracking = servers["storage"], servers["tracking"].uri
    # Started together: the survivor cannot finish the study while the victim's trial is
    # running, since it waits for running trials rather than exiting.
    survivor = start_worker(data, tmp_path / "a", space, 6, storage, tracking, "killed")
    victim = start_worker(data, tmp_path / "b", space, 6, storage, tracking, "killed")
    victim.wait_for("epoch 1/3")  # the victim is part-way through its first trial
    victim.kill()
    assert victim.finish() == -signal.SIGKILL
    assert survivor.finish() == 0, survivor.output[-3000:]

    study = optuna.load_study(study_name="killed", storage=storage)
    trials = study.trials
    victim_id = f":{victim.proc.pid}"
    killed = [t for t in trials if t.user_attrs.get("worker", "").endswith(victim_id)]
    assert [t.state.name for t in killed] == ["FAIL"], [(t.number, t.state.name) for t in killed]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert len(retries) == 1 and retries[0].params == killed[0].params  # retried once, with the same options
    assert retries[0].state.name in ("COMPLETE", "PRUNED") and not retries[0].user_attrs["worker"].endswith(victim_id)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 6
    statuses = {int(r.data.tags["optuna.trial"]): r.info.status for r in trial_runs(tracking, study.user_attrs["mlflow_parent_run_id"])}
    assert statuses[killed[0].number] == "FAILED" and "RUNNING" not in statuses.values()


def test_database_stopped_mid_study_ends_it_cleanly_and_keeps_finished_trials(data: Path, tmp_path: Path) -> None:
    pg = PostgresServer()
    try:
        pg.start()
        pg.create_database("optuna")
        storage = pg.url("optuna")
        tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
        space = space_file(tmp_path)
        worker = start_worker(data, tmp_path / "out", space, 20, storage, tracking, "lost")
        worker.wait_for("trial 2/20 value", "trial 2/20 pruned")  # two trials finished
        worker.wait_for("trial 3/20 epoch 1/3")
        pg.stop()
        started = time.monotonic()
        code = worker.finish(timeout=120)
        assert code == 1, worker.output[-3000:]
        assert time.monotonic() - started < 60
        output = worker.output
        assert "error: --storage postgresql://tuner:***@127.0.0.1:" in output and "the study database went away" in output
        assert "rerun the same command when the database is back" in output
        assert "Traceback" not in output and PASSWORD not in output
        rows = (tmp_path / "out" / "tune" / "lost" / "trials.csv").read_text().splitlines()
        assert len(rows) >= 3  # header + the two finished trials, written as they finished

        pg.start()
        study = optuna.load_study(study_name="lost", storage=storage)
        finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(finished) >= 2  # kept
        time.sleep(2.5)  # the lost trial's heartbeat (1 s) goes stale after its 2 s grace period
        resumed = start_worker(data, tmp_path / "out", space, len(finished) + 1, storage, tracking, "lost")
        assert resumed.finish() == 0, resumed.output[-3000:]
        study = optuna.load_study(study_name="lost", storage=storage)
        assert [t.number for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")][: len(finished)] == [t.number for t in finished]
        assert any(t.system_attrs.get("failed_trial") is not None for t in study.trials)  # the lost trial ran again
        # Artifacts of a given sqlite:/// store live beside it, not in ./mlruns of the working folder.
        assert list((tmp_path / "artifacts").rglob("trials.csv")) and not (REPO / "mlruns").exists()
    finally:
        pg.cleanup()


def test_training_registry_and_archive_through_the_tracking_server(servers, data: Path, tmp_path: Path) -> None:
    server = servers["tracking"]
    uri = server.uri
    first = run_training(tiny_config(data, tmp_path / "one", epochs=1, register=True, tracking_uri=uri))
    second = run_training(tiny_config(data, tmp_path / "two", epochs=1, register=True, tracking_uri=uri, seed=1))

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and "best_val_f1" in run.data.metrics and run.data.params["image_size"] == "75"
    assert len(client.get_metric_history(first.run_id, "train_loss")) >= 1
    plots = {a.path for a in client.list_artifacts(first.run_id, "plots")}
    assert {"plots/confusion_matrix.png", "plots/pr_curve.png"} <= plots
    # The server keeps the artifacts in its own artifact root, not beside the training run.
    assert list(server.artifacts.rglob("confusion_matrix.png"))
    assert not (tmp_path / "one" / "mlflow").exists()

    versions = {v.version: v.aliases for v in registry.list_versions(uri, "watermark")}
    assert versions == {"1": ["champion"], "2": ["challenger"]}
    assert cli_main(["registry", "promote", "--tracking-uri", uri, "--version", "2"]) == 0
    assert registry.resolve(uri, "models:/watermark@previous").version == "1"

    store = tmp_path / "store"
    built = create_mar("--from-registry", "models:/watermark@champion", "--tracking-uri", uri, "--model-store", str(store))
    assert built.returncode == 0, built.stderr[-2000:]
    assert "registry version 2" in built.stdout and (store / "watermark.mar").is_file()
    assert second.registered_version == "2"

    # The champion is an MLflow model that loads through the server and answers like its bundle.
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/watermark@champion")
    photo = sf.jpeg_bytes(seed=3)
    answer = model.predict(pd.DataFrame({"image": [photo]})).iloc[0]
    assert answer["probability"] == pytest.approx(sf.expected_probability(second.export_dir, photo), abs=1e-5)
    assert answer["status"] == 200 and answer["error"] is None


def test_unreachable_tracking_server_fails_training_before_any_epoch(data: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    started = time.monotonic()
    code = cli_main([
        "train", "--data", str(data), "--output", str(out), "--weights", "none", "--image-size", "75",
        "--unfreeze-from", "Mixed_7c", "--epochs", "1", "--no-progress", "--tracking-uri", "http://127.0.0.1:1",
    ])  # fmt: skip
    assert code == 2
    assert "--tracking-uri http://127.0.0.1:1: cannot reach the MLflow store" in capsys.readouterr().err
    assert time.monotonic() - started < 60
    assert not out.exists()  # no cache, no checkpoint, no epoch
