"""The steps the training loop repeats: model inputs, one epoch, validation, the learning rate.

Small functions of the model, a dataset and the options; :mod:`train.training` strings
them together into a run.
"""

from __future__ import annotations

import math
import random
import resource
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from handler.preprocess import PreprocessSpec
from train import cache as cache_lib
from train import data as data_lib
from train import metrics as metrics_lib
from train import model as model_lib
from train.config import TrainConfig, output_paths

# Deeper feature caches are derived from the cache after Mixed_5d (the cut of the
# default --unfreeze-from Mixed_6a), so every cut shares that one base cache.
CACHE_BASE_BLOCK = "Mixed_6a"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

def resolve_pos_weight(config: TrainConfig, samples: list[data_lib.Sample]) -> float:
    if config.pos_weight != "auto":
        return float(config.pos_weight)
    positives = sum(s.label for s in samples)
    return (len(samples) - positives) / max(1, positives)

def subsample_groups(samples: list[data_lib.Sample], fraction: float, seed: int) -> list[data_lib.Sample]:
    """Keep a seeded share of the duplicate groups (pairs and copies stay together)."""
    if fraction >= 1:
        return samples
    groups = sorted({s.group for s in samples})
    keep = set(random.Random(seed).sample(groups, max(1, round(len(groups) * fraction))))
    return [s for s in samples if s.group in keep]

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

def select_score(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name, float("nan"))
    return -1.0 if value is None or math.isnan(value) else float(value)
