"""A training run: staged fine-tuning, checkpoints, early stop, MLflow, export, registry.

:func:`run_training` is the single entry point used by the ``train`` command and by every
tuning trial (:mod:`train.tune`). It reads as its phases, each a function below: resume
state, data, network, cached inputs, optimiser, the epoch loop, the best epoch's
threshold and report, export, registry. It returns the best validation score so callers
can compare runs, and takes optional hooks for a parent MLflow run and per-epoch reporting.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from handler.preprocess import PreprocessSpec
from train import augment as augment_lib
from train import cache as cache_lib
from train import data as data_lib
from train import export as export_lib
from train import metrics as metrics_lib
from train import model as model_lib
from train import overlay as overlay_lib
from train import relabel as relabel_lib
from train import splits as splits_lib
from train.config import TrainConfig, check_resume_config, output_paths
from train.io import write_json_atomic, write_with
from train.steps import (
    build_inputs, evaluate_split, holdout_row, lr_factor, make_items, peak_rss_mb, resolve_pos_weight, seed_everything,
    select_score, stage_block, subsample_groups, train_one_epoch,
)
from train.tracking import Tracker, check_tracking

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1

# Called after every epoch with (epoch number from 1, validation score, history row);
# returning True stops the run (a pruned tuning trial).
EpochCallback = Callable[[int, float, dict[str, float]], bool]


class TrainingStopped(Exception):
    """Raised by :func:`run_training` when the epoch callback asked to stop (run marked KILLED)."""

    def __init__(self, epoch: int, score: float, run_id: str | None) -> None:
        super().__init__(f"stopped after epoch {epoch} (score {score:.4f})")
        self.epoch, self.score, self.run_id = epoch, score, run_id


@dataclass
class TrainResult:
    best_score: float
    select_metric: str
    val_metrics: dict[str, float]
    threshold: dict[str, Any]
    epochs_run: int
    export_dir: str | None
    run_id: str | None
    history: list[dict[str, float]] = field(default_factory=list)
    registered_version: str | None = None


def save_checkpoint_atomic(state: dict[str, Any], path: Path) -> None:
    write_with(path, lambda handle: torch.save(state, handle))


@dataclass
class Run:
    """What every phase of one run shares."""

    config: TrainConfig
    paths: dict[str, Path]
    started: float
    prefix: str  # of the progress bars, e.g. "trial 3 "

@dataclass
class PreparedData:
    splits: splits_lib.DataSplits
    counts: dict[str, int]
    reports: list[Path]  # written under reports/, logged to MLflow

@dataclass
class Network:
    model: model_lib.WatermarkNet
    normalization: str
    spec: PreprocessSpec
    runtime: model_lib.Runtime

@dataclass
class Inputs:
    """Model inputs of every split, cached up to ``start`` where the cache is on."""

    train_set: Dataset
    val_set: Dataset
    start: int  # block index the cached inputs enter at (0: pixels)
    cut: int
    val_labels: np.ndarray
    sampler: splits_lib.PairBatchSampler
    loader: DataLoader
    head: tuple[DataLoader, Dataset] | None  # the whole backbone cached, for the head-only epochs
    holdout: tuple[Dataset, np.ndarray] | None  # for the held-out curve (reports only)
    seconds: float

@dataclass
class Progress:
    """Where the epoch loop stands: restored on resume, updated every epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf
    bad_epochs: int = 0
    first_epoch: int = 0
    run_id: str | None = None
    best_state: dict[str, Any] | None = None  # the best epoch's checkpoint, kept in memory
    stopped_early: bool = False

def run_training(
    config: TrainConfig,
    *,
    parent_run_id: str | None = None,
    run_tags: dict[str, str] | None = None,
    on_epoch: EpochCallback | None = None,
    label: str = "",
) -> TrainResult:
    """Train, select the best epoch, choose the threshold, export; returns the best score.

    The phases, in order: resume state, data, network, cached inputs, optimiser (and its
    restored state), the epoch loop, the best epoch's threshold and report, export,
    registry. Each is a function below.

    Args:
        config: every option of the run.
        parent_run_id: log as a nested MLflow run under this (active) parent run.
        run_tags: extra MLflow tags of the run.
        on_epoch: called after every epoch; returning True stops the run, which ends
            as KILLED and raises :class:`TrainingStopped`.
        label: prefix of the progress bars, e.g. ``trial 3``.

    Raises:
        TrainingStopped: when ``on_epoch`` asked to stop.
    """
    config.validate()
    if config.tracking_uri:
        check_tracking(config.tracking_uri)  # a clear error now, not after the feature cache is built
    run = Run(config, output_paths(config), time.time(), f"{label} " if label else "")
    for key in ("root", "checkpoints", "reports"):
        run.paths[key].mkdir(parents=True, exist_ok=True)
    resume_state = load_resume_state(run)
    seed_everything(config.seed)
    data = prepare_data(run)
    net = build_network(config, resume_state)
    inputs = build_training_inputs(run, net, data.splits, resumed_epochs=resume_state["epoch"] + 1 if resume_state else 0)
    pos_weight = resolve_pos_weight(config, data.splits.train)
    criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=net.runtime.device))
    optimizer = build_optimizer(net.model, config)
    progress = restore_progress(optimizer, resume_state, config)
    tracker = Tracker(
        config.tracking_uri, run.paths["root"], config.experiment, run_id=progress.run_id, run_name=config.run_name,
        parent_run_id=parent_run_id, tags=run_tags,
    )
    status = "FAILED"
    try:
        log_run_start(tracker, run, data, net, inputs, pos_weight)
        run_epochs(run, net, inputs, optimizer, criterion, progress, tracker, on_epoch)
        best, val_scores, choice = finalise(run, net, inputs, progress, tracker, data.counts)
        export_dir = export_best(run, net, data.splits, best, val_scores, choice, tracker) if config.export else None
        registered = register_export(config, tracker, progress.best_score) if config.register else None
        status = "FINISHED"
        return TrainResult(
            best_score=progress.best_score, select_metric=config.select_metric, val_metrics=val_scores,
            threshold=choice.to_dict(), epochs_run=len(progress.history), export_dir=export_dir,
            run_id=tracker.run_id, history=progress.history,
            registered_version=registered.version if registered else None,
        )
    except TrainingStopped:
        status = "KILLED"
        raise
    finally:
        tracker.end(status)

def load_resume_state(run: Run) -> dict[str, Any] | None:
    """``last.pt`` with ``--resume`` (its options must match), else None."""
    last_path = run.paths["checkpoints"] / "last.pt"
    if not run.config.resume:
        if last_path.exists():
            log.info("starting fresh: %s will be overwritten (use --resume to continue it)", last_path)
        return None
    if not last_path.is_file():
        raise FileNotFoundError(f"--resume: {last_path} does not exist; start without --resume")
    state = torch.load(last_path, map_location="cpu", weights_only=False)
    check_resume_config(state["config"], run.config)
    return state

def prepare_data(run: Run) -> PreparedData:
    """Scan and split the data, add overlays, write the data reports; counts for MLflow."""
    config, reports_dir = run.config, run.paths["reports"]
    splits = splits_lib.load_splits(
        Path(config.data), val_fraction=config.val_fraction, seed=config.seed, holdout_fraction=config.holdout_fraction,
        relabel=Path(config.relabel) if config.relabel else None,
    )
    splits.train = subsample_groups(splits.train, config.train_fraction, config.seed)
    if config.overlay_negatives:
        splits.train = overlay_lib.add_overlay_pairs(
            splits.train, run.paths["root"] / "overlay", copies=config.overlay_negatives, seed=config.seed
        )
    skipped_csv = data_lib.write_skipped_report(splits.skipped, reports_dir / "skipped.csv")
    reports = [skipped_csv, data_lib.write_data_report(splits.report, reports_dir / "duplicates.csv")]  # logs its counts
    relabelled_csv, holdout_csv = reports_dir / "relabelled.csv", reports_dir / "holdout.csv"
    if config.relabel:
        relabel_lib.write_relabel_report(splits.relabelled, relabelled_csv)
    else:
        relabelled_csv.unlink(missing_ok=True)  # a stale list from an earlier run would claim labels this run did not change
    if splits.val_source == "split":  # the validation split, e.g. for export-int8 --val-labels
        reports.append(splits_lib.write_holdout_list(splits.val, splits.root, reports_dir / "val.csv"))
    else:
        (reports_dir / "val.csv").unlink(missing_ok=True)
    if splits.holdout:
        splits_lib.write_holdout_list(splits.holdout, splits.root, holdout_csv)
        reports.append(holdout_csv)
    else:
        holdout_csv.unlink(missing_ok=True)  # a stale list from an earlier run would be evaluated as if held out
    if config.relabel:
        reports += [relabelled_csv, Path(config.relabel)]
    counts = {
        "train_positive": sum(s.label for s in splits.train),
        "train_negative": sum(1 - s.label for s in splits.train),
        "val_positive": sum(s.label for s in splits.val),
        "val_negative": sum(1 - s.label for s in splits.val),
        "holdout_positive": sum(s.label for s in splits.holdout),
        "holdout_negative": sum(1 - s.label for s in splits.holdout),
        "skipped_files": len(splits.skipped),
        "relabelled_files": len(splits.relabelled),
        **splits.report.counts(),
    }
    log.info("data: %s (validation from %s); skipped %d files, listed in %s", counts, splits.val_source, len(splits.skipped), skipped_csv)
    return PreparedData(splits, counts, reports)

def build_network(config: TrainConfig, resume_state: dict[str, Any] | None) -> Network:
    """The model with its backbone weights (or the resumed ones), on the run's device."""
    model, normalization = model_lib.build_model(
        config.weights, pool=config.pool, dropout=config.dropout, last_block=config.last_block
    )
    spec = PreprocessSpec.for_weights(normalization, image_size=config.image_size, resize=config.resize)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    runtime = config.runtime()
    return Network(runtime.prepare(model), normalization, spec, runtime)

def build_training_inputs(run: Run, net: Network, splits: splits_lib.DataSplits, *, resumed_epochs: int) -> Inputs:
    """Datasets and loaders of every split, from the feature cache where it is on.

    Features of the frozen blocks come from the pretrained (or resumed) weights, which
    stay unchanged for the whole run because those blocks never train. During the head
    stage nothing in the backbone trains, so the whole backbone's output is cached too.
    """
    config, prefix = run.config, run.prefix
    cut = min(model_lib.block_index(config.unfreeze_from) if config.cache else 0, len(model_lib.BLOCKS))
    train_items = make_items(splits.train, augment_lib.augmentations_for(config.augment))
    val_items = make_items(splits.val, ("orig",))
    t0 = time.time()
    train_set, start = build_inputs(net.model, train_items, net.spec, config, cut, f"{prefix}cache train")
    val_set, _ = build_inputs(net.model, val_items, net.spec, config, cut, f"{prefix}cache val")
    holdout = None
    if config.holdout_curve:
        holdout_set, _ = build_inputs(net.model, make_items(splits.holdout, ("orig",)), net.spec, config, cut, f"{prefix}cache holdout")
        holdout = (holdout_set, np.array([s.label for s in splits.holdout], dtype=int))
    sampler = splits_lib.PairBatchSampler([s.batch_key for s, _ in train_items], config.batch_size, seed=config.seed)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=config.num_workers)
    head = None
    end = len(model_lib.BLOCKS)
    if config.cache and cut < end and resumed_epochs < config.head_epochs:
        head_train, _ = build_inputs(net.model, train_items, net.spec, config, end, f"{prefix}cache head train")
        head_val, _ = build_inputs(net.model, val_items, net.spec, config, end, f"{prefix}cache head val")
        head = (DataLoader(head_train, batch_sampler=sampler, num_workers=config.num_workers), head_val)
    val_labels = np.array([s.label for s in splits.val], dtype=int)
    return Inputs(train_set, val_set, start, cut, val_labels, sampler, loader, head, holdout, time.time() - t0)

def build_optimizer(model: model_lib.WatermarkNet, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over the parameter groups; ``initial_lr`` records each group's base rate."""
    optimizer = torch.optim.AdamW(
        model_lib.parameter_groups(model, lr=config.lr, backbone_lr_mult=config.backbone_lr_mult, weight_decay=config.weight_decay)
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer

def restore_progress(optimizer: torch.optim.Optimizer, resume_state: dict[str, Any] | None, config: TrainConfig) -> Progress:
    """A fresh :class:`Progress`, or the one saved in ``last.pt`` (optimiser and RNG too)."""
    if resume_state is None:
        return Progress()
    optimizer.load_state_dict(resume_state["optimizer"])
    torch.set_rng_state(resume_state["torch_rng"])
    progress = Progress(
        history=resume_state["history"], best_score=resume_state["best_score"], bad_epochs=resume_state["bad_epochs"],
        first_epoch=resume_state["epoch"] + 1, run_id=resume_state.get("run_id"),
    )
    log.info("resuming after epoch %d (best %s %.4f)", progress.first_epoch, config.select_metric, progress.best_score)
    return progress

def log_run_start(tracker: Tracker, run: Run, data: PreparedData, net: Network, inputs: Inputs, pos_weight: float) -> None:
    config = run.config
    tracker.set_tags({"weights": config.weights, "normalization": net.normalization})
    cache_cut = model_lib.BLOCKS[inputs.cut - 1] if inputs.cut else "none"
    tracker.log_params({**asdict(config), **data.counts, "pos_weight_value": round(pos_weight, 4), "cache_cut": cache_cut})
    for report in data.reports:
        tracker.log_artifact(report, "reports")
    tracker.log_metrics({"cache_seconds": inputs.seconds})

def run_epochs(
    run: Run, net: Network, inputs: Inputs, optimizer: torch.optim.Optimizer, criterion: nn.Module,
    progress: Progress, tracker: Tracker, on_epoch: EpochCallback | None,
) -> None:
    """The epoch loop: train, validate, checkpoint, stop early or when ``on_epoch`` says so.

    ``elapsed_seconds`` of a history row is the training time so far (a resumed run adds
    to its last row), without the seconds spent scoring the held-out split for the curve.
    """
    config, model = run.config, net.model
    measuring = -float(progress.history[-1].get("elapsed_seconds", 0.0)) if progress.history else 0.0
    end = len(model_lib.BLOCKS)
    for epoch in range(progress.first_epoch, config.epochs):
        first_trainable = stage_block(config, epoch)
        inputs.sampler.set_epoch(epoch)
        t_epoch = time.time()
        use_head = inputs.head is not None and first_trainable == model_lib.HEAD
        loader, val_set, start = (*inputs.head, end) if use_head else (inputs.loader, inputs.val_set, inputs.start)
        train_loss = train_one_epoch(
            model, loader, start, first_trainable, optimizer, criterion, config.aux_weight,
            desc=f"{run.prefix}epoch {epoch + 1}/{config.epochs} [{first_trainable}+]", progress=config.progress,
            runtime=net.runtime, lr_at=lambda done, e=epoch: lr_factor(config.lr_schedule, (e + done) / config.epochs),
        )
        val_scores, _, _ = evaluate_split(model, val_set, start, config, inputs.val_labels)
        row = {"epoch": epoch + 1, "train_loss": train_loss, "epoch_seconds": time.time() - t_epoch}
        row["elapsed_seconds"] = time.time() - run.started - measuring
        row.update({f"val_{k}": v for k, v in val_scores.items()})
        if inputs.holdout is not None:
            t_holdout = time.time()
            row.update(holdout_row(model, *inputs.holdout, inputs.start, config, val_scores["threshold"]))
            measuring += time.time() - t_holdout
        progress.history.append(row)
        tracker.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch + 1)
        score = select_score(val_scores, config.select_metric)
        improved = score > progress.best_score
        if improved:
            progress.best_score, progress.bad_epochs = score, 0
        elif epoch >= config.head_epochs:
            progress.bad_epochs += 1
        log.info(
            "%sepoch %d/%d %s+ loss %.4f | val %s %.4f f1 %.3f fpr %.3f%s (%.0fs)",
            run.prefix, epoch + 1, config.epochs, first_trainable, train_loss, config.select_metric, score,
            val_scores["f1"], val_scores["fpr"], " *best*" if improved else "", row["epoch_seconds"],
        )
        save_epoch(run, net, optimizer, progress, tracker, epoch, improved)
        if on_epoch is not None and on_epoch(epoch + 1, score, row):
            tracker.set_tags({"stopped_by": "epoch callback (pruned)"})
            raise TrainingStopped(epoch + 1, progress.best_score, tracker.run_id)
        if progress.bad_epochs >= config.patience:
            log.info("early stop: no %s improvement for %d epochs", config.select_metric, progress.bad_epochs)
            progress.stopped_early = True
            break

def save_epoch(
    run: Run, net: Network, optimizer: torch.optim.Optimizer, progress: Progress, tracker: Tracker, epoch: int,
    improved: bool,
) -> None:
    """Keep the best epoch in memory; with checkpoints on, also write best.pt and last.pt
    (what ``--resume`` continues from)."""
    state = {
        "version": CHECKPOINT_VERSION, "model": net.model.state_dict(), "optimizer": optimizer.state_dict(),
        "epoch": epoch, "config": asdict(run.config), "history": progress.history, "best_score": progress.best_score,
        "bad_epochs": progress.bad_epochs, "normalization": net.normalization, "spec": net.spec.to_dict(),
        "run_id": tracker.run_id, "torch_rng": torch.get_rng_state(),
    }
    if improved:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in state["model"].items()}
        progress.best_state = {**state, "optimizer": None, "model": weights}
    if run.config.save_checkpoints:
        if improved:
            save_checkpoint_atomic(progress.best_state, run.paths["checkpoints"] / "best.pt")
        save_checkpoint_atomic(state, run.paths["checkpoints"] / "last.pt")

def finalise(
    run: Run, net: Network, inputs: Inputs, progress: Progress, tracker: Tracker, counts: dict[str, int]
) -> tuple[dict[str, Any], dict[str, float], metrics_lib.ThresholdChoice]:
    """Load the best epoch, choose its threshold on validation, write best.pt (once, with
    the threshold) and reports/metrics.json, log the figures."""
    config = run.config
    best_path = run.paths["checkpoints"] / "best.pt"
    best = progress.best_state  # None only when the best epoch came before a resume
    if best is None:
        best = torch.load(best_path, map_location="cpu", weights_only=False)
    net.model.load_state_dict(best["model"])
    val_scores, choice, probs = evaluate_split(net.model, inputs.val_set, inputs.start, config, inputs.val_labels)
    best["threshold"] = choice.to_dict()
    log.info("threshold %.4f by rule %s: %s", choice.threshold, choice.rule, choice.note)
    if config.save_checkpoints:
        save_checkpoint_atomic(best, best_path)
    tracker.log_metrics({f"best_val_{k}": v for k, v in val_scores.items()})
    tracker.log_figure(metrics_lib.confusion_figure(val_scores, "validation (best epoch)"), "plots/confusion_matrix.png")
    tracker.log_figure(metrics_lib.pr_curve_figure(inputs.val_labels, probs, choice.threshold), "plots/pr_curve.png")
    tracker.set_tags({"threshold_rule": choice.rule, "stopped_early": str(progress.stopped_early)})
    summary = {
        "best_epoch": int(best["epoch"]) + 1, "select_metric": config.select_metric, "best_score": progress.best_score,
        "val": val_scores, "threshold": choice.to_dict(), "counts": counts, "history": progress.history,
        "seconds": {"cache": round(inputs.seconds, 1), "until_best_model": round(time.time() - run.started, 1)},
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    write_json_atomic(run.paths["reports"] / "metrics.json", summary)
    tracker.log_artifact(run.paths["reports"] / "metrics.json", "reports")
    return best, val_scores, choice

def export_best(
    run: Run, net: Network, splits: splits_lib.DataSplits, best: dict[str, Any], val_scores: dict[str, float],
    choice: metrics_lib.ThresholdChoice, tracker: Tracker,
) -> str:
    """Trace the best model on the CPU, parity-check it on real photos and write the bundle."""
    config = run.config
    model = net.model.cpu().to(memory_format=torch.contiguous_format)  # exported and traced on the CPU, NCHW
    real = torch.stack([cache_lib.pixel_tensor(s, "orig", net.spec) for s in splits.val[:3]])
    info = {
        "model_name": "watermark", "weights": config.weights, "normalization": net.normalization,
        "best_epoch": int(best["epoch"]) + 1, "val_metrics": val_scores, "mlflow_run_id": tracker.run_id,
        "config": asdict(config), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    parity = export_lib.export_model(
        model, net.spec, choice.to_dict(), run.paths["export"], info=info, real_inputs=real, tolerance=config.export_tolerance
    )
    tracker.log_metrics({"export_parity_max_abs_diff": parity["max_abs_diff"]})
    tracker.log_artifacts(run.paths["export"], "export")
    log.info("exported to %s (parity max |diff| %.2e)", run.paths["export"], parity["max_abs_diff"])
    return str(run.paths["export"])

def register_export(config: TrainConfig, tracker: Tracker, best_score: float) -> Any:
    """Log the run's export as an MLflow pyfunc model and register it (champion first, then challenger)."""
    from train import registry as registry_lib

    registered = registry_lib.register_run_export(
        tracker.uri, tracker.run_id, name=config.registered_model, description=f"val {config.select_metric} {best_score:.4f}"
    )
    tracker.set_tags({"registered_model": f"{registered.name}/{registered.version}"})
    log.info(
        "registered %s version %s, MLflow model %s (aliases: %s)",
        registered.name, registered.version, registered.model_id, ", ".join(registered.aliases) or "none",
    )
    return registered
