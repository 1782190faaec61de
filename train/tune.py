"""Hyper-parameter tuning with Optuna; every trial is a real :func:`train.training.run_training` run.

* The objective calls the same ``run_training()`` as the ``train`` command (no second loop),
  with checkpoints kept in memory and no export, and reports the validation score
  after every epoch so :class:`optuna.pruners.MedianPruner` can stop weak trials.
* The study lives in an RDB storage (SQLite file by default; any SQLAlchemy URL, e.g.
  PostgreSQL, lets several machines share one study). Rerunning the same command
  resumes it: finished trials are kept, and a trial whose process died is marked
  failed once its heartbeat goes stale and is run again once.
* Workers: the same ``tune`` command run on N machines against one database splits the
  trials between them. A worker starts a trial only while the study has fewer than
  ``n_trials`` trials finished or running, so the study ends at ``n_trials`` (a trial is
  claimed by one worker; two workers asking at the same instant may run one extra).
  A worker with nothing left to start waits for the others' trials: one whose worker died
  goes stale, is failed and is retried once, by whichever worker is still there.
* MLflow: one parent run per study, made by the worker that creates the study; every
  trial of every worker is a nested run under it.
* Trials share one feature cache, so the frozen lower blocks run once per image.
* After every trial ``best_config.json`` (options ``train --config`` accepts) and
  ``trials.csv`` are rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from train.config import TrainConfig
from train.io import SQLITE_PREFIX, default_tracking_uri, read_json_option, redact_url, sqlite_path, write_json_atomic, write_text_atomic
from train.tracking import check_tracking, ensure_experiment
from train.training import TrainingStopped, run_training

log = logging.getLogger(__name__)

# Seconds to wait for a database that does not answer.
CONNECT_TIMEOUT = 10
# How long a worker joining a study waits for the creating worker's parent MLflow run.
PARENT_WAIT_SECONDS = 60


class StorageLost(RuntimeError):
    """The study's database went away during the study; finished trials are kept in it."""


def worker_id() -> str:
    """``host:pid``: which worker ran a trial (a user attribute and an MLflow tag)."""
    return f"{socket.gethostname()}:{os.getpid()}"

# Options a trial may not change: where things go and how the run is driven.
NOT_TUNABLE = frozenset({
    "data", "output", "cache", "cache_dir", "tracking_uri", "experiment", "run_name", "resume", "progress",
    "save_checkpoints", "export", "export_tolerance", "register", "registered_model", "weights", "image_size",
    "resize", "val_fraction", "train_fraction", "select_metric", "threshold_rule", "threshold_target", "epochs",
    "head_epochs", "patience", "seed", "holdout_fraction", "holdout_curve", "relabel", "cache_dtype", "device", "amp", "channels_last",
    "num_workers",
})  # fmt: skip
TUNABLE = tuple(f.name for f in fields(TrainConfig) if f.name not in NOT_TUNABLE)
# Options in best_config.json that describe the tuning run rather than the model.
RUN_ONLY = ("output", "cache_dir", "run_name", "resume", "progress", "save_checkpoints", "export", "register")


@dataclass(frozen=True)
class Dimension:
    """One searched option: a float/int range (``log`` for a log scale) or choices."""

    name: str
    kind: str  # "float" | "int" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "categorical":
            return f"{self.name} in {list(self.choices)}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


DEFAULT_SPACE: tuple[Dimension, ...] = (
    Dimension("lr", "float", 2e-4, 5e-3, log=True),
    Dimension("backbone_lr_mult", "float", 0.05, 1.0, log=True),
    Dimension("weight_decay", "float", 1e-6, 1e-2, log=True),
    Dimension("batch_size", "categorical", choices=(8, 16, 32)),
    # How many Inception blocks train after the head stage: Mixed_6a = 8 blocks, Mixed_7a = 3.
    # The team measured that the Mixed_6 blocks must train, so Mixed_7b/7c-only is not searched.
    Dimension("unfreeze_from", "categorical", choices=("Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a")),
    Dimension("augment", "categorical", choices=(0, 1, 2)),
    Dimension("dropout", "float", 0.0, 0.7),
    Dimension("pos_weight", "float", 0.5, 3.0, log=True),
)


def baseline_params(space: tuple[Dimension, ...], base: TrainConfig, auto_pos_weight: float) -> dict[str, Any] | None:
    """The base options as a point of the space (the untuned default), or None when a
    base value lies outside it. ``pos_weight auto`` is its value on this data."""
    params: dict[str, Any] = {}
    for d in space:
        value = getattr(base, d.name)
        if d.name == "pos_weight":
            value = auto_pos_weight if value == "auto" else float(value)
        if d.kind == "categorical":
            if value not in d.choices:
                return None
        elif not d.low <= value <= d.high:
            return None
        params[d.name] = value
    return params


def _auto_pos_weight(base: TrainConfig) -> float:
    from train import splits as splits_lib
    from train.steps import resolve_pos_weight, subsample_groups

    splits = splits_lib.load_splits(Path(base.data), val_fraction=base.val_fraction, seed=base.seed)
    return resolve_pos_weight(replace(base, pos_weight="auto"), subsample_groups(splits.train, base.train_fraction, base.seed))


def _as_config_value(name: str, value: Any) -> Any:
    """Search values -> TrainConfig values (``pos_weight`` is a string option)."""
    if name == "pos_weight" and not isinstance(value, str):
        return f"{float(value):.4g}"
    return value


def parse_space(spec: dict[str, Any], base: TrainConfig) -> tuple[Dimension, ...]:
    """A search space from JSON: ``{"lr": {"low": 1e-4, "high": 1e-2, "log": true},
    "batch_size": {"choices": [8, 16]}, "augment": {"low": 0, "high": 2, "int": true}}``.

    Every bound and choice is checked with the training options' own validation, so
    an impossible value fails here, before any trial starts.
    """
    if not isinstance(spec, dict) or not spec:
        raise ValueError("search space: expected a non-empty JSON object {option: {low, high[, log, int]} | {choices: [...]}}")
    dims: list[Dimension] = []
    for name, entry in spec.items():
        if name not in TUNABLE:
            raise ValueError(f"search space: unknown parameter {name!r}; tunable are {', '.join(TUNABLE)}")
        if not isinstance(entry, dict):
            raise ValueError(f"search space {name}: expected an object with low/high or choices, got {entry!r}")
        extra = sorted(set(entry) - {"low", "high", "log", "int", "choices"})
        if extra:
            raise ValueError(f"search space {name}: unknown keys {extra}; allowed are low, high, log, int, choices")
        if "choices" in entry:
            choices = entry["choices"]
            if not isinstance(choices, list) or not choices or len({json.dumps(c) for c in choices}) != len(choices):
                raise ValueError(f"search space {name}: choices must be a non-empty list of distinct values, got {choices!r}")
            dim = Dimension(name, "categorical", choices=tuple(choices))
            values = list(choices)
        else:
            low, high = entry.get("low"), entry.get("high")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
                raise ValueError(f"search space {name}: low and high must be finite numbers, got low={low!r} high={high!r}")
            if not low < high:
                raise ValueError(f"search space {name}: invalid range low={low} >= high={high}")
            log_scale = bool(entry.get("log", False))
            if log_scale and low <= 0:
                raise ValueError(f"search space {name}: a log range needs low > 0, got {low}")
            kind = "int" if entry.get("int") else "float"
            if kind == "int" and (int(low) != low or int(high) != high):
                raise ValueError(f"search space {name}: an int range needs whole numbers, got {low}..{high}")
            dim = Dimension(name, kind, float(low), float(high), log=log_scale)
            values = [int(low), int(high)] if kind == "int" else [low, high]
        for value in values:
            try:
                replace(base, **{name: _as_config_value(name, value)}).validate()
            except (ValueError, TypeError) as exc:
                raise ValueError(f"search space {name}: value {value!r} is not a valid training option ({exc})") from None
        dims.append(dim)
    return tuple(dims)


def space_to_json(space: tuple[Dimension, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in space:
        if d.kind == "categorical":
            out[d.name] = {"choices": list(d.choices)}
        else:
            out[d.name] = {"low": d.low, "high": d.high, "log": d.log, **({"int": True} if d.kind == "int" else {})}
    return out


def load_space(path: Path | None, base: TrainConfig) -> tuple[Dimension, ...]:
    """The search space of ``--space FILE`` (it replaces the default), else the default."""
    if path is None:
        return parse_space(space_to_json(DEFAULT_SPACE), base)
    spec = read_json_option(Path(path), "--space")
    try:
        return parse_space(spec, base)
    except ValueError as exc:
        raise ValueError(f"--space {path}: {exc}") from None


@dataclass
class TuneSettings:
    """How the study runs (the base training options come as a :class:`TrainConfig`)."""

    n_trials: int = 20
    study_name: str = "watermark-tune"
    storage: str | None = None
    tune_dir: str | None = None
    timeout: float | None = None
    sampler_startup_trials: int = 6
    pruner_startup_trials: int = 4
    prune_from_epoch: int | None = None
    heartbeat_seconds: int = 30
    space_file: str | None = None
    baseline: bool = True

    def validate(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"--n-trials {self.n_trials}: must be >= 1")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"--timeout {self.timeout}: must be > 0 seconds")
        for name in ("sampler_startup_trials", "pruner_startup_trials"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be >= 0")
        if self.prune_from_epoch is not None and self.prune_from_epoch < 1:
            raise ValueError(f"--prune-from-epoch {self.prune_from_epoch}: must be >= 1")
        if self.heartbeat_seconds < 1:
            raise ValueError(f"--heartbeat {self.heartbeat_seconds}: must be >= 1 second")
        if not self.study_name or "/" in self.study_name:
            raise ValueError(f"--study-name {self.study_name!r}: a non-empty name without '/'")


@dataclass
class TuneResult:
    study_name: str
    storage: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_config_path: str | None
    counts: dict[str, int]
    parent_run_id: str
    seconds: float
    trials_run_here: int = 0


def tune_paths(base: TrainConfig, settings: TuneSettings) -> dict[str, Path]:
    root = Path(settings.tune_dir) if settings.tune_dir else Path(base.output) / "tune"
    study = root / settings.study_name
    return {"root": root, "study": study, "trials": study / "trials", "best": study / "best_config.json", "csv": study / "trials.csv"}


def default_storage(root: Path) -> str:
    return f"{SQLITE_PREFIX}{(root / 'optuna.db').resolve()}"


def open_storage(url: str, heartbeat_seconds: int):
    """An Optuna RDB storage with heartbeats; a clear error when it cannot be reached."""
    import warnings

    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    # Heartbeats and the retry callback are marked experimental; they are what makes
    # an interrupted trial recoverable, so the warning is expected.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith(("postgresql", "mysql")):
        # A server that does not answer is an error in seconds, not a TCP timeout in minutes.
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
    try:
        if (db := sqlite_path(url)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_seconds,
            grace_period=2 * heartbeat_seconds,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    except (optuna.exceptions.StorageInternalError, ImportError, ValueError, Exception) as exc:  # noqa: BLE001 - any driver error
        reason = str(exc).splitlines()[0][:300]
        raise ValueError(f"--storage {redact_url(url)}: cannot open the study storage ({type(exc).__name__}: {reason})") from None


def close_orphan_runs(study: Any, parent_id: str, experiment_id: str) -> int:
    """Mark FAILED the trial runs left RUNNING by a killed process (their trials failed)."""
    from mlflow import MlflowClient
    from optuna.trial import TrialState

    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    client = MlflowClient()
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'"
    )
    closed = 0
    for run in runs:
        if run.data.tags.get("optuna.trial") in failed:
            client.set_terminated(run.info.run_id, "FAILED")
            closed += 1
    return closed


def trial_config(
    base: TrainConfig, params: dict[str, Any], number: int, trials_dir: Path, cache_dir: Path, tracking_uri: str
) -> TrainConfig:
    """The training options of one trial: base options, the sampled values, and a
    trial folder; checkpoints in memory, no export, the shared feature cache and
    the study's MLflow store."""
    values = {name: _as_config_value(name, value) for name, value in params.items()}
    return replace(
        base, **values, output=str(trials_dir / f"trial_{number:04d}"), cache_dir=str(cache_dir), tracking_uri=tracking_uri,
        run_name=f"trial-{number}", resume=False, save_checkpoints=False, export=False, register=False,
    )


def best_config_values(base: TrainConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Options ``train --config`` accepts: the base options with the best values in."""
    values = asdict(replace(base, **{k: _as_config_value(k, v) for k, v in params.items()}))
    for key in RUN_ONLY:
        values.pop(key, None)
    return values


def _trial_rows(study: Any) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number, "state": t.state.name, "value": t.value, "epochs": len(t.intermediate_values),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "val_f1": t.user_attrs.get("val_f1"), "baseline": bool(t.user_attrs.get("baseline")), "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
            "worker": t.user_attrs.get("worker"), "retry_of": t.system_attrs.get("failed_trial"),
            **{f"param_{k}": v for k, v in sorted(t.params.items())},
        })  # fmt: skip
    return rows


def write_trials_csv(study: Any, path: Path) -> None:
    rows = _trial_rows(study)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def trial_summary(trial: Any, total: int) -> str:
    """The one line printed after every trial."""
    params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(trial.params.items()))
    seconds = f"{trial.duration.total_seconds():.0f}s" if trial.duration else "?"
    if trial.state.name == "COMPLETE":
        f1 = trial.user_attrs.get("val_f1")
        outcome = f"value {trial.value:.4f}" + (f" f1 {f1:.3f}" if f1 is not None else "")
        if trial.user_attrs.get("baseline"):
            outcome += " (untuned default)"
    elif trial.state.name == "PRUNED":
        last = max(trial.intermediate_values) if trial.intermediate_values else 0
        outcome = f"pruned after epoch {last}"
    else:
        outcome = trial.state.name.lower()
    return f"trial {trial.number + 1}/{total} {outcome} in {seconds} | {params}"


def tune(base: TrainConfig, settings: TuneSettings) -> TuneResult:
    """Run (or resume, or join) the study until ``n_trials`` trials have finished (complete
    or pruned), counting every worker's trials.

    Phases: check the options and reach the stores, open (or resume) the study, find (or
    start) the parent MLflow run, run trials, then write the best options and the counts.
    A database that goes away on the way raises :class:`StorageLost`; what finished is kept.
    """
    import mlflow

    base.validate()
    settings.validate()
    space = load_space(Path(settings.space_file) if settings.space_file else None, base)
    paths = tune_paths(base, settings)
    storage_url = settings.storage or default_storage(paths["root"])
    tracking_uri = base.tracking_uri or default_tracking_uri(Path(base.output))
    storage = open_storage(storage_url, settings.heartbeat_seconds)
    check_tracking(tracking_uri)
    paths["trials"].mkdir(parents=True, exist_ok=True)
    cache_dir = Path(base.cache_dir) if base.cache_dir else Path(base.output) / "cache"

    try:
        study, created = open_study(base, settings, space, storage, storage_url)
        mlflow.set_tracking_uri(tracking_uri)
        experiment_id = ensure_experiment(base.tracking_uri, Path(base.output), base.experiment)
        parent_id = wait_for_parent_run(study, wait=not created)
        started = time.time()
        new_parent = parent_id is None
        with mlflow.start_run(run_id=parent_id, experiment_id=experiment_id if new_parent else None,
                              run_name=f"tune-{settings.study_name}" if new_parent else None) as parent:  # fmt: skip
            parent_id = parent.info.run_id
            if new_parent:
                study.set_user_attr("mlflow_parent_run_id", parent_id)
                mlflow.set_tags({"optuna.study": settings.study_name, "optuna.storage": redact_url(storage_url), "kind": "tuning"})
                mlflow.log_params({"n_trials": settings.n_trials, "space": json.dumps(space_to_json(space))[:500], **{f"base_{k}": str(v)[:250] for k, v in asdict(base).items()}})
            objective = make_objective(base, settings, space, paths, cache_dir, tracking_uri, parent_id)
            after_trial = make_after_trial(base, settings, paths)
            ran = run_trials(study, objective, after_trial, settings)
            best, counts = finish_study(study, base, paths, parent_id, experiment_id)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise StorageLost(
            f"--storage {redact_url(storage_url)}: the study database went away ({storage_error_reason(exc)}). "
            f"Trials that finished are kept in it, and {paths['csv']} lists them as of the last finished trial; "
            "the trial in progress will be failed and retried once: rerun the same command when the database is back"
        ) from None
    return TuneResult(
        study_name=settings.study_name, storage=redact_url(storage_url), best_value=best.value if best else None,
        best_params=dict(best.params) if best else {}, best_trial=best.number if best else None,
        best_config_path=str(paths["best"]) if best else None, counts=counts, parent_run_id=parent_id,
        seconds=time.time() - started, trials_run_here=ran,
    )


def _storage_error_types() -> tuple[type[BaseException], ...]:
    import optuna
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def _exception_chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_storage_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is the database failing, not the code."""
    kinds = _storage_error_types()
    return any(isinstance(e, kinds) for e in _exception_chain(exc))


def storage_error_reason(exc: BaseException) -> str:
    kinds = _storage_error_types()
    first = next(e for e in _exception_chain(exc) if isinstance(e, kinds))
    orig = getattr(first, "orig", None) or first
    text = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {text[0][:200]}" if text else type(orig).__name__


def trial_counts(study: Any) -> dict[str, int]:
    counts = {state: 0 for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def run_trials(study: Any, objective: Callable[[Any], float], after_trial: Callable[[Any, Any], None], settings: TuneSettings) -> int:
    """This worker's share: start one trial at a time while the study (all workers) has
    fewer than ``n_trials`` trials finished or running; when every remaining slot is held by
    another worker's trial, wait for it to finish or go stale (then run its retry). Returns
    how many trials this worker ran."""
    from optuna.storages import fail_stale_trials

    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    poll = min(float(settings.heartbeat_seconds), 5.0)
    ran = 0
    waiting_logged = False
    while deadline is None or time.monotonic() < deadline:
        fail_stale_trials(study)  # trials of dead workers: failed, and queued again once
        counts = trial_counts(study)
        finished = counts["COMPLETE"] + counts["PRUNED"]
        if finished >= settings.n_trials:
            break
        if finished + counts["RUNNING"] < settings.n_trials:
            study.optimize(objective, n_trials=1, callbacks=[after_trial], gc_after_trial=True)
            ran += 1
            waiting_logged = False
            continue
        if not waiting_logged:
            log.info("%d trial(s) finished, %d running elsewhere: waiting for them (a dead worker's trial is retried here)", finished, counts["RUNNING"])
            waiting_logged = True
        time.sleep(poll)
    return ran


def open_study(base: TrainConfig, settings: TuneSettings, space: tuple[Dimension, ...], storage: Any, storage_url: str) -> tuple[Any, bool]:
    """Create the study (queueing the baseline trial first), or load it to resume or join it;
    and whether this worker created it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Epochs are steps 1..E; by default the first chance to prune is after the first
    # epoch that trains backbone blocks (head-only scores say little about a trial).
    warmup = base.head_epochs + 1 if settings.prune_from_epoch is None else settings.prune_from_epoch
    pruner = optuna.pruners.MedianPruner(n_startup_trials=settings.pruner_startup_trials, n_warmup_steps=warmup)
    common = dict(study_name=settings.study_name, storage=storage, pruner=pruner)

    def sampler(seed: int) -> Any:
        return optuna.samplers.TPESampler(seed=seed % 2**32, n_startup_trials=settings.sampler_startup_trials)

    try:
        study = optuna.create_study(**common, direction="maximize", sampler=sampler(base.seed))
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        # Resuming or joining: reseeded with the trials so far and this process, so neither a
        # resumed study nor a second worker redraws the random start-up points already tried.
        n_before = len(optuna.load_study(**common).get_trials(deepcopy=False))
        study = optuna.load_study(**common, sampler=sampler(base.seed + n_before + 7919 * os.getpid()))
        created = False
    if created and settings.baseline:
        baseline = baseline_params(space, base, _auto_pos_weight(base))
        if baseline is None:
            log.info("the base options lie outside the search space; no baseline trial")
        else:
            # Trial 1 is the untuned default under the same budget, for an honest comparison.
            study.enqueue_trial(baseline, user_attrs={"baseline": True})
    stored_space = study.user_attrs.get("search_space")
    if stored_space is not None and stored_space != space_to_json(space):
        log.warning("study %s was started with another search space; TPE now samples the new one", settings.study_name)
    study.set_user_attr("search_space", space_to_json(space))
    study.set_user_attr("select_metric", base.select_metric)
    counts = trial_counts(study)
    finished = counts["COMPLETE"] + counts["PRUNED"]
    log.info(
        "study %s in %s (%s, worker %s): %d finished trial(s) so far, %d running, %d to go; space: %s",
        settings.study_name, redact_url(storage_url), "created" if created else "joined", worker_id(), finished,
        counts["RUNNING"], max(0, settings.n_trials - finished), "; ".join(d.describe() for d in space),
    )
    return study, created


def existing_parent_run(study: Any) -> str | None:
    """The study's parent MLflow run, when it still exists in the store."""
    import mlflow

    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is not None:
        try:
            mlflow.get_run(parent_id)
        except Exception:  # noqa: BLE001 - the run was deleted from the store: start a new parent
            parent_id = None
    return parent_id


def wait_for_parent_run(study: Any, *, wait: bool) -> str | None:
    """The parent run to nest trials under. A worker that joins a study another worker has
    just created waits (up to a minute) for that worker's parent run; None: start one."""
    deadline = time.monotonic() + (PARENT_WAIT_SECONDS if wait else 0)
    while True:
        parent_id = existing_parent_run(study)
        if parent_id is not None or time.monotonic() >= deadline:
            return parent_id
        time.sleep(0.5)


def make_objective(
    base: TrainConfig, settings: TuneSettings, space: list[Any], paths: dict[str, Path], cache_dir: Path,
    tracking_uri: str, parent_id: str,
) -> Callable[[Any], float]:
    """Optuna's objective: one :func:`run_training` per trial, pruned through its epoch hook."""
    import optuna

    def objective(trial: optuna.Trial) -> float:
        params = {d.name: d.suggest(trial) for d in space}
        trial.set_user_attr("worker", worker_id())
        config = trial_config(base, params, trial.number, paths["trials"], cache_dir, tracking_uri)

        def report(epoch: int, score: float, row: dict[str, float]) -> bool:
            trial.report(score, step=epoch)
            return epoch < config.epochs and trial.should_prune()

        tags = {"optuna.study": settings.study_name, "optuna.trial": str(trial.number), "optuna.worker": worker_id()}
        try:
            result = run_training(config, parent_run_id=parent_id, run_tags=tags, on_epoch=report, label=f"trial {trial.number + 1}/{settings.n_trials}")
        except TrainingStopped as stop:
            trial.set_user_attr("mlflow_run_id", stop.run_id)
            raise optuna.TrialPruned(str(stop)) from None
        trial.set_user_attr("mlflow_run_id", result.run_id)
        trial.set_user_attr("val_f1", result.val_metrics.get("f1"))
        trial.set_user_attr("threshold", result.threshold.get("threshold"))
        trial.set_user_attr("epochs_run", result.epochs_run)
        return result.best_score

    return objective


def make_after_trial(base: TrainConfig, settings: TuneSettings, paths: dict[str, Path]) -> Callable[[Any, Any], None]:
    """After every trial: print its line, rewrite trials.csv and best_config.json, log the best so far."""
    import mlflow

    def after_trial(study: Any, trial: Any) -> None:
        print(trial_summary(trial, settings.n_trials), flush=True)
        write_trials_csv(study, paths["csv"])
        try:
            best = study.best_trial
        except ValueError:
            return
        write_json_atomic(paths["best"], best_config_values(base, best.params))
        mlflow.log_metrics({"best_value": float(best.value), "finished_trials": float(_finished(study))}, step=trial.number)
        mlflow.set_tags({"best_trial": str(best.number), "best_mlflow_run_id": str(best.user_attrs.get("mlflow_run_id"))})

    return after_trial


def finish_study(study: Any, base: TrainConfig, paths: dict[str, Path], parent_id: str, experiment_id: str) -> tuple[Any, dict[str, int]]:
    """Close runs of interrupted trials, log the counts, write the best options; (best trial or None, counts)."""
    import mlflow

    write_trials_csv(study, paths["csv"])
    closed = close_orphan_runs(study, parent_id, experiment_id)
    if closed:
        log.info("marked %d MLflow run(s) of interrupted trials as FAILED", closed)
    counts = {state: sum(1 for t in study.trials if t.state.name == state) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    mlflow.log_metrics({f"trials_{k.lower()}": float(v) for k, v in counts.items()})
    try:
        best = study.best_trial
    except ValueError:
        best = None
    if best is not None:
        write_json_atomic(paths["best"], best_config_values(base, best.params))
        mlflow.set_tags({f"best.{k}": str(v) for k, v in best.params.items()})
        mlflow.log_artifact(str(paths["best"]))
    mlflow.log_artifact(str(paths["csv"]))
    return best, counts
