"""The training loop: staged fine-tuning, checkpoints, early stop, MLflow, export.

``train(config)`` is the single entry point used by the ``train`` command and by every
tuning trial (:mod:`train.tune`): it returns the best validation score so callers can
compare runs, and takes optional hooks for a parent MLflow run and per-epoch reporting.
"""

from __future__ import annotations

import logging
import math
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from handler.preprocess import PreprocessSpec
from train import augment as augment_lib
from train import cache as cache_lib
from train import data as data_lib
from train import export as export_lib
from train import metrics as metrics_lib
from train import model as model_lib
from train import overlay as overlay_lib
from train.io import read_json_option, write_json_atomic, write_with
from train.tracking import Tracker

log = logging.getLogger(__name__)

SELECT_METRICS = ("roc_auc", "average_precision", "f1")
LR_SCHEDULES = ("constant", "cosine")
CHECKPOINT_VERSION = 1
# Deeper feature caches are derived from the cache after Mixed_5d (the cut of the
# default --unfreeze-from Mixed_6a), so every cut shares that one base cache.
CACHE_BASE_BLOCK = "Mixed_6a"
# The aux head pools Mixed_6e's map with a 5x5 window and then needs a 5x5 map: 299 px.
AUX_MIN_SIZE = 299

# Called after every epoch with (epoch number from 1, validation score, history row);
# returning True stops the run (a pruned tuning trial).
EpochCallback = Callable[[int, float, dict[str, float]], bool]


class TrainingStopped(Exception):
    """Raised by :func:`train` when the epoch callback asked to stop (run marked KILLED)."""

    def __init__(self, epoch: int, score: float, run_id: str | None) -> None:
        super().__init__(f"stopped after epoch {epoch} (score {score:.4f})")
        self.epoch, self.score, self.run_id = epoch, score, run_id


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in checkpoints and MLflow)."""

    data: str
    output: str = "artifacts"
    weights: str = "fid-inception"
    image_size: int = 299
    resize: str = "squash"
    pool: str = "avgmax"
    dropout: float = 0.5
    epochs: int = 6
    head_epochs: int = 1
    unfreeze_from: str = "Mixed_6a"
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"
    backbone_lr_mult: float = 0.3
    weight_decay: float = 1e-4
    pos_weight: str = "auto"
    aux_weight: float = 0.4
    augment: int = 1
    overlay_negatives: float = 0
    val_fraction: float = 0.2
    holdout_fraction: float = 0.0
    holdout_curve: bool = False
    relabel: str | None = None
    train_fraction: float = 1.0
    seed: int = 0
    patience: int = 3
    select_metric: str = "roc_auc"
    threshold_rule: str = "target-fpr"
    threshold_target: float | None = None
    cache: bool = True
    cache_dir: str | None = None
    cache_dtype: str = "float16"
    device: str = "cpu"
    amp: str = "none"
    channels_last: bool = True
    num_workers: int = 0
    tracking_uri: str | None = None
    experiment: str = "watermark"
    run_name: str | None = None
    resume: bool = False
    progress: bool = True
    save_checkpoints: bool = True
    export: bool = True
    export_tolerance: float = export_lib.DEFAULT_TOLERANCE
    register: bool = False
    registered_model: str = "watermark"

    def validate(self) -> None:
        """Check values at the edge; every message names the option and what is allowed."""
        positive_ints = {"epochs": self.epochs, "batch_size": self.batch_size}
        for name, value in positive_ints.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} {value}: must be >= 1")
        if not 0 <= self.head_epochs <= self.epochs:
            raise ValueError(f"--head-epochs {self.head_epochs}: allowed is 0..--epochs ({self.epochs})")
        if self.patience < 1:
            raise ValueError(f"--patience {self.patience}: must be >= 1")
        for name in ("lr", "backbone_lr_mult"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"--{name.replace('_', '-')} {value}: must be a positive number")
        augment_lib.augmentations_for(self.augment)
        if not 0 < self.train_fraction <= 1:
            raise ValueError(f"--train-fraction {self.train_fraction}: allowed is 0 < fraction <= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"--dropout {self.dropout}: allowed is 0 <= dropout < 1")
        if self.register and not self.export:
            raise ValueError("--register needs the export; drop --no-export")
        if self.resume and not self.save_checkpoints:
            raise ValueError("--resume needs checkpoints (save_checkpoints true)")
        if self.register and not self.save_checkpoints:
            raise ValueError("--register needs checkpoints (save_checkpoints true)")
        if not (self.overlay_negatives >= 0 and math.isfinite(self.overlay_negatives)):
            raise ValueError(f"--overlay-negatives {self.overlay_negatives}: must be a number >= 0")
        if not 0 <= self.holdout_fraction < 0.5:
            raise ValueError(f"--holdout-fraction {self.holdout_fraction}: allowed is 0 <= fraction < 0.5")
        if self.holdout_curve and not self.holdout_fraction:
            raise ValueError("--holdout-curve scores the held-out split after every epoch; it needs --holdout-fraction > 0")
        if self.num_workers < 0:
            raise ValueError(f"--num-workers {self.num_workers}: must be >= 0")
        cache_lib.check_store_dtype(self.cache_dtype)
        self.runtime()
        if self.weight_decay < 0 or self.aux_weight < 0:
            raise ValueError("--weight-decay and --aux-weight must be >= 0")
        if self.pos_weight != "auto":
            try:
                ok = float(self.pos_weight) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"--pos-weight {self.pos_weight!r}: allowed is 'auto' or a positive number")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"--lr-schedule {self.lr_schedule!r}: allowed are {', '.join(LR_SCHEDULES)}")
        if self.select_metric not in SELECT_METRICS:
            raise ValueError(f"--select-metric {self.select_metric!r}: allowed are {', '.join(SELECT_METRICS)}")
        if self.threshold_rule not in metrics_lib.THRESHOLD_RULES:
            raise ValueError(
                f"--threshold-rule {self.threshold_rule!r}: allowed are {', '.join(metrics_lib.THRESHOLD_RULES)}"
            )
        model_lib.block_index(self.unfreeze_from)
        aux_trains = model_lib.block_index(self.unfreeze_from) <= model_lib.BLOCKS.index(model_lib.AUX_AFTER)
        if self.aux_weight > 0 and aux_trains and self.image_size < AUX_MIN_SIZE:
            raise ValueError(
                f"--image-size {self.image_size} with --unfreeze-from {self.unfreeze_from}: the aux head needs "
                f"--image-size >= {AUX_MIN_SIZE}; pass --aux-weight 0 or unfreeze from Mixed_7a or later"
            )
        if self.unfreeze_from == model_lib.HEAD and self.head_epochs != self.epochs:
            log.info("--unfreeze-from head: every epoch trains the heads only")
        PreprocessSpec(image_size=self.image_size, resize=self.resize)

    def runtime(self) -> model_lib.Runtime:
        """Device, layout and precision of the run (checked: a missing CUDA is a clear error)."""
        return model_lib.Runtime(device=self.device, amp=self.amp, channels_last=self.channels_last)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training options {unknown}; allowed are {sorted(known)}")
        return cls(**values)


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


# ---------------------------------------------------------------- helpers


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def output_paths(config: TrainConfig) -> dict[str, Path]:
    root = Path(config.output)
    return {
        "root": root,
        "checkpoints": root / "checkpoints",
        "export": root / "export",
        "reports": root / "reports",
        "cache": Path(config.cache_dir) if config.cache_dir else root / "cache",
        "mlflow": root / "mlflow",
    }


def save_checkpoint_atomic(state: dict[str, Any], path: Path) -> None:
    write_with(path, lambda handle: torch.save(state, handle))


def resolve_pos_weight(config: TrainConfig, samples: list[data_lib.Sample]) -> float:
    if config.pos_weight != "auto":
        return float(config.pos_weight)
    positives = sum(s.label for s in samples)
    return (len(samples) - positives) / max(1, positives)


def lr_factor(schedule: str, progress: float) -> float:
    """Learning-rate multiplier at ``progress`` (0 = start of training, 1 = end)."""
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
    return 1.0


def stage_block(config: TrainConfig, epoch: int) -> str:
    """First trainable block for an epoch: heads only during the first stage."""
    return model_lib.HEAD if epoch < config.head_epochs else config.unfreeze_from


def make_items(samples: list[data_lib.Sample], augmentations: tuple[str, ...]) -> list[tuple[data_lib.Sample, str]]:
    """Training items: every sample under every augmentation."""
    return [(s, a) for s in samples for a in augmentations]


def build_inputs(
    model: model_lib.WatermarkNet,
    items: list[tuple[data_lib.Sample, str]],
    spec: PreprocessSpec,
    config: TrainConfig,
    cut: int,
    desc: str,
) -> tuple[Dataset, int]:
    """Dataset of model inputs and the block index they enter at (0 = pixels)."""
    if config.cache and cut > 0:
        paths = output_paths(config)
        dataset = cache_lib.cached_features(
            model, items, spec, stop=cut, base_stop=model_lib.block_index(CACHE_BASE_BLOCK),
            cache_dir=paths["cache"], progress=config.progress, desc=desc, dtype=config.cache_dtype,
            runtime=config.runtime(),
        )
        return dataset, cut
    return cache_lib.PixelDataset(items, spec), 0


def predict_probs(
    model: model_lib.WatermarkNet, dataset: Dataset, start: int, batch_size: int, runtime: model_lib.Runtime | None = None,
    num_workers: int = 0,
) -> np.ndarray:
    """Sigmoid probabilities in eval mode, in dataset order."""
    runtime = runtime or model_lib.Runtime()
    model.eval()
    out: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with torch.inference_mode():
        for inputs, _ in loader:
            with runtime.autocast():
                logits, _ = model.forward_from(runtime.input(inputs), start)
            out.append(torch.sigmoid(logits.double()).squeeze(1).cpu().numpy())  # float64: no saturation at 1.0
    return np.concatenate(out) if out else np.zeros(0)


def train_one_epoch(
    model: model_lib.WatermarkNet,
    loader: DataLoader,
    start: int,
    first_trainable: str,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    aux_weight: float,
    *,
    desc: str,
    progress: bool,
    runtime: model_lib.Runtime | None = None,
    lr_at: Callable[[float], float] | None = None,
) -> float:
    """One pass over the training batches; returns the mean loss.

    ``lr_at(fraction of the epoch done)`` gives the learning-rate multiplier per step
    (applied to each parameter group's ``initial_lr``); None keeps the rates as they are.
    """
    model_lib.set_trainable(model, first_trainable)
    model_lib.set_train_mode(model, first_trainable)
    runtime = runtime or model_lib.Runtime()
    total, count = 0.0, 0
    with_aux = aux_weight > 0 and model_lib.block_index(first_trainable) <= model_lib.BLOCKS.index(model_lib.AUX_AFTER)
    bar = tqdm(loader, desc=desc, disable=None if progress else True, unit="batch", leave=False)
    steps = max(1, len(loader)) if lr_at is not None else 1
    for step, (inputs, labels) in enumerate(bar):
        if lr_at is not None:
            factor = lr_at(step / steps)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
        labels = labels.float().unsqueeze(1).to(runtime.device)
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast():
            logits, aux = model.forward_from(runtime.input(inputs), start, with_aux=with_aux)
        loss = criterion(logits.float(), labels)
        if aux is not None:
            loss = loss + aux_weight * criterion(aux.float(), labels)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
        bar.set_postfix(loss=f"{total / count:.4f}")
    return total / max(1, count)


def evaluate_split(
    model: model_lib.WatermarkNet, dataset: Dataset, start: int, config: TrainConfig, labels: np.ndarray
) -> tuple[dict[str, float], metrics_lib.ThresholdChoice, np.ndarray]:
    probs = predict_probs(model, dataset, start, config.batch_size, config.runtime(), config.num_workers)
    choice = metrics_lib.choose_threshold(labels, probs, config.threshold_rule, config.threshold_target)
    scores = metrics_lib.binary_metrics(labels, probs, choice.threshold)
    eps = 1e-7
    clipped = np.clip(probs, eps, 1 - eps)
    scores["loss"] = float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)))
    scores["threshold"] = choice.threshold
    return scores, choice, probs


def holdout_row(
    model: model_lib.WatermarkNet, dataset: Dataset, labels: np.ndarray, start: int, config: TrainConfig, threshold: float
) -> dict[str, float]:
    """``holdout_*`` metrics of this epoch at its validation threshold: a time-vs-quality
    curve for reports only. Nothing (epoch, threshold, stopping) is ever chosen from them,
    and the random state is restored (a DataLoader draws its seed from it), so the run
    trains exactly as it would without the curve."""
    with torch.random.fork_rng(devices=[]):
        probs = predict_probs(model, dataset, start, config.batch_size, config.runtime(), config.num_workers)
    scores = metrics_lib.binary_metrics(labels, probs, threshold)
    return {f"holdout_{k}": scores[k] for k in ("f1", "precision", "recall", "fpr", "roc_auc")}


def _score(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name, float("nan"))
    return -1.0 if value is None or math.isnan(value) else float(value)


# ---------------------------------------------------------------- main loop


def subsample_groups(samples: list[data_lib.Sample], fraction: float, seed: int) -> list[data_lib.Sample]:
    """Keep a seeded share of the duplicate groups (pairs and copies stay together)."""
    if fraction >= 1:
        return samples
    groups = sorted({s.group for s in samples})
    keep = set(random.Random(seed).sample(groups, max(1, round(len(groups) * fraction))))
    return [s for s in samples if s.group in keep]


@dataclass
class Run:
    """What every phase of one run shares."""

    config: TrainConfig
    paths: dict[str, Path]
    started: float
    prefix: str  # of the progress bars, e.g. "trial 3 "


@dataclass
class PreparedData:
    splits: data_lib.DataSplits
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
    sampler: data_lib.PairBatchSampler
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


def train(
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
    _check_resume_config(state["config"], run.config)
    return state


def prepare_data(run: Run) -> PreparedData:
    """Scan and split the data, add overlays, write the data reports; counts for MLflow."""
    config, reports_dir = run.config, run.paths["reports"]
    splits = data_lib.load_splits(
        Path(config.data), val_fraction=config.val_fraction, seed=config.seed, holdout_fraction=config.holdout_fraction,
        relabel=Path(config.relabel) if config.relabel else None,
    )
    splits.train = subsample_groups(splits.train, config.train_fraction, config.seed)
    if config.overlay_negatives:
        splits.train = overlay_lib.overlay_negatives(
            splits.train, run.paths["root"] / "overlay", copies=config.overlay_negatives, seed=config.seed
        )
    skipped_csv = data_lib.write_skipped_report(splits.skipped, reports_dir / "skipped.csv")
    reports = [skipped_csv, data_lib.write_data_report(splits.report, reports_dir / "duplicates.csv")]  # logs its counts
    relabelled_csv, holdout_csv = reports_dir / "relabelled.csv", reports_dir / "holdout.csv"
    if config.relabel:
        data_lib.write_relabel_report(splits.relabelled, relabelled_csv)
    else:
        relabelled_csv.unlink(missing_ok=True)  # a stale list from an earlier run would claim labels this run did not change
    if splits.holdout:
        data_lib.write_holdout_list(splits.holdout, splits.root, holdout_csv)
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
    model, normalization = model_lib.build_model(config.weights, pool=config.pool, dropout=config.dropout)
    spec = PreprocessSpec.for_weights(normalization, image_size=config.image_size, resize=config.resize)
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
    runtime = config.runtime()
    return Network(runtime.prepare(model), normalization, spec, runtime)


def build_training_inputs(run: Run, net: Network, splits: data_lib.DataSplits, *, resumed_epochs: int) -> Inputs:
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
    sampler = data_lib.PairBatchSampler([s.batch_key for s, _ in train_items], config.batch_size, seed=config.seed)
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
        score = _score(val_scores, config.select_metric)
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
    run: Run, net: Network, splits: data_lib.DataSplits, best: dict[str, Any], val_scores: dict[str, float],
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
    """Register the run's export in the MLflow model registry (champion first, then challenger)."""
    from train import registry as registry_lib

    registered = registry_lib.register_run_export(
        tracker.uri, tracker.run_id, name=config.registered_model, description=f"val {config.select_metric} {best_score:.4f}"
    )
    tracker.set_tags({"registered_model": f"{registered.name}/{registered.version}"})
    log.info("registered %s version %s (aliases: %s)", registered.name, registered.version, ", ".join(registered.aliases) or "none")
    return registered


RESUME_MUST_MATCH = (
    "data", "weights", "image_size", "resize", "pool", "unfreeze_from", "seed", "augment", "val_fraction",
    "overlay_negatives", "train_fraction", "holdout_fraction", "relabel",
)


def _check_resume_config(saved: dict[str, Any], config: TrainConfig) -> None:
    changed = [k for k in RESUME_MUST_MATCH if saved.get(k) != getattr(config, k)]
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in changed)
        raise ValueError(f"--resume: options differ from the checkpoint ({details}); rerun with the original values or without --resume")


def load_config_file(path: Path) -> dict[str, Any]:
    """Training options from a JSON file (e.g. tuned parameters); keys as in :class:`TrainConfig`."""
    values = read_json_option(path, "--config")
    if not isinstance(values, dict):
        raise ValueError(f"--config {path}: expected a JSON object of training options")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"--config {path}: unknown options {unknown}; allowed are {sorted(known)}")
    return values
