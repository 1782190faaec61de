"""Every option of a training run (:class:`TrainConfig`), checked before anything starts.

The ``train`` command, tuning trials and ``--config`` files all go through this class;
:data:`RESUME_MUST_MATCH` lists the options a ``--resume`` must not change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from handler.preprocess import PreprocessSpec
from train import augment as augment_lib
from train import cache as cache_lib
from train import export as export_lib
from train import metrics as metrics_lib
from train import model as model_lib
from train.io import read_json_option

log = logging.getLogger(__name__)

SELECT_METRICS = ("roc_auc", "average_precision", "f1")
LR_SCHEDULES = ("constant", "cosine")
# The aux head pools Mixed_6e's map with a 5x5 window and then needs a 5x5 map: 299 px.
AUX_MIN_SIZE = 299


@dataclass
class TrainConfig:
    """Everything a training run depends on (saved in checkpoints and MLflow)."""

    data: str
    output: str = "artifacts"
    weights: str = "fid-inception"
    image_size: int = 299
    resize: str = "squash"
    pool: str = "avgmax"
    last_block: str = "Mixed_7c"
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
        if self.last_block not in model_lib.LAST_BLOCKS:
            raise ValueError(f"--last-block {self.last_block!r}: allowed are {', '.join(model_lib.LAST_BLOCKS)}")
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


RESUME_MUST_MATCH = (
    "data", "weights", "image_size", "resize", "pool", "unfreeze_from", "seed", "augment", "val_fraction",
    "overlay_negatives", "train_fraction", "holdout_fraction", "relabel",
)


def check_resume_config(saved: dict[str, Any], config: TrainConfig) -> None:
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
