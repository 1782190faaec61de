"""MLflow tracking of one training run: a thin wrapper, resumable, imported lazily."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from train.io import default_tracking_uri, redact_url, sqlite_path

log = logging.getLogger(__name__)

# Seconds to wait for a tracking server that does not answer.
CONNECT_TIMEOUT = 10


def ensure_experiment(tracking_uri: str | None, output: Path, name: str) -> str:
    """The id of MLflow experiment ``name`` in the current store, created when missing.
    In an SQLite store (the embedded default ``OUTPUT/mlflow/mlflow.db``, or a given
    ``sqlite:///`` URI) artifacts live beside the database file, under ``artifacts/``
    (MLflow's own default would be ``./mlruns`` in whatever folder the command ran in); a
    tracking server keeps them in its own artifact root."""
    import mlflow

    from mlflow.exceptions import MlflowException

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    db = sqlite_path(tracking_uri or default_tracking_uri(output))
    location = (db.parent / "artifacts").resolve().as_uri() if db is not None else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        # Another worker of a shared tracking server created it a moment ago.
        found = mlflow.get_experiment_by_name(name)
        if found is None:
            raise
        log.debug("experiment %s appeared meanwhile (%s)", name, exc.error_code)
        return found.experiment_id


def check_tracking(uri: str) -> None:
    """Fail before any epoch or trial when the MLflow store cannot be reached (one quick
    request to a tracking server, without MLflow's minutes of retries)."""
    from mlflow import MlflowClient

    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(CONNECT_TIMEOUT)}
    saved = {k: os.environ.get(k) for k in quick}
    try:
        for key, value in quick.items():
            os.environ.setdefault(key, value)
        if (db := sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - any store error is reported the same way
        reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise ValueError(f"--tracking-uri {redact_url(uri)}: cannot reach the MLflow store ({reason})") from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Tracker:
    """One MLflow run (new, resumed by id, or nested under a parent); MLflow is imported
    only when a tracker is made, so importing training code has no side effects."""

    def __init__(
        self,
        tracking_uri: str | None,
        output: Path,
        experiment: str,
        *,
        run_id: str | None = None,
        run_name: str | None = None,
        parent_run_id: str | None = None,
        tags: dict[str, str] | None = None,
    ) -> None:
        import mlflow

        self.mlflow = mlflow
        uri = tracking_uri or default_tracking_uri(output)
        if (db := sqlite_path(uri)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(uri)
        experiment_id = ensure_experiment(tracking_uri, Path(output), experiment)
        self.run = mlflow.start_run(
            run_id=run_id, experiment_id=None if run_id else experiment_id, run_name=run_name,
            nested=parent_run_id is not None, parent_run_id=parent_run_id, tags=tags,
        )
        self.run_id = self.run.info.run_id
        self.uri = uri

    def log_params(self, params: dict[str, Any]) -> None:
        existing = self.mlflow.get_run(self.run_id).data.params
        fresh = {k: str(v)[:500] for k, v in params.items() if k not in existing}
        if fresh:
            self.mlflow.log_params(fresh)

    def log_metrics(self, values: dict[str, float], step: int | None = None) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        self.mlflow.log_metrics(clean, step=step)

    def log_figure(self, figure: Any, name: str) -> None:
        import matplotlib.pyplot as plt

        self.mlflow.log_figure(figure, name)
        plt.close(figure)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.mlflow.log_artifacts(str(folder), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.mlflow.set_tags(tags)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
