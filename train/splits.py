"""The train / validation / held-out split, by duplicate group, and batches that keep pairs together."""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Sampler

from train.data import CLASSES, DataReport, Sample, resolve_train_root, scan_folder, write_csv_report
from train.relabel import RelabelRow, apply_relabels, read_relabel_file

log = logging.getLogger(__name__)


@dataclass
class DataSplits:
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[Path, str]]
    val_source: str  # "folder" or "split"
    excluded: list[Sample] = field(default_factory=list)
    report: DataReport = field(default_factory=DataReport)
    holdout: list[Sample] = field(default_factory=list)  # never trained, selected or thresholded on
    root: Path | None = None  # the train folder, which file names in reports are relative to
    relabelled: list[RelabelRow] = field(default_factory=list)  # what a relabel file changed


def stratified_split(
    samples: Sequence[Sample], *, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split keeping class ratios, never separating a duplicate group.

    Groups (:attr:`Sample.group`: duplicates and pairs) are assigned whole: a group goes
    to validation when that moves its classes' validation counts towards ``val_fraction``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: allowed is 0 < fraction < 1")
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        groups[s.group].append(s)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    totals = [sum(1 for s in samples if s.label == c) for c in (0, 1)]
    targets = [max(1, round(t * val_fraction)) for t in totals]
    in_val = [0, 0]
    train: list[Sample] = []
    val: list[Sample] = []
    for key in keys:
        members = groups[key]
        need = [sum(1 for s in members if s.label == c) for c in (0, 1)]
        fits = all(in_val[c] + need[c] <= targets[c] or need[c] == 0 for c in (0, 1))
        if fits and any(need[c] and in_val[c] < targets[c] for c in (0, 1)):
            val.extend(members)
            in_val = [in_val[c] + need[c] for c in (0, 1)]
        else:
            train.extend(members)
    for c, name in enumerate(CLASSES):
        if not any(s.label == c for s in train) or not any(s.label == c for s in val):
            raise ValueError(
                f"cannot split class {name!r} ({totals[c]} images) into train and validation with "
                f"val_fraction={val_fraction}; add images or provide a val/ folder"
            )
    return train, val


HOLDOUT_SEED_OFFSET = 104_729  # the held-out draw is independent of the validation draw


def load_splits(
    data: Path, *, val_fraction: float = 0.2, seed: int = 0, holdout_fraction: float = 0.0, relabel: Path | None = None
) -> DataSplits:
    """Scan ``data`` and return train/validation(/held-out) samples, skipped files and the data report.

    Args:
        data: the data folder (see the module docstring for layouts).
        val_fraction: validation share of all photos when there is no ``val/`` folder.
        seed: split seed.
        holdout_fraction: share of all photos of the train folder set aside first (by
            duplicate group, stratified) as a held-out test split; 0 for none.
        relabel: a relabel file (:func:`read_relabel_file`) applied to the train folder's
            labels before any split; None for the folders' labels as they are.
    """
    if not 0 <= holdout_fraction < 0.5:
        raise ValueError(f"holdout_fraction={holdout_fraction!r}: allowed is 0 <= fraction < 0.5")
    train_root, val_root = resolve_train_root(data)
    relabels = read_relabel_file(Path(relabel)) if relabel is not None else None  # a bad file fails before the scan
    scanned = scan_folder(train_root)
    relabelled: list[RelabelRow] = []
    if relabels is not None:
        scanned, relabelled = apply_relabels(scanned, train_root, relabels)
    samples, holdout = scanned.samples, []
    if holdout_fraction > 0:
        samples, holdout = stratified_split(samples, val_fraction=holdout_fraction, seed=seed + HOLDOUT_SEED_OFFSET)
    if val_root is not None:
        val_scan = scan_folder(val_root)
        return DataSplits(
            samples, val_scan.samples, scanned.skipped + val_scan.skipped, "folder",
            scanned.excluded + val_scan.excluded, scanned.report.merged(val_scan.report), holdout, train_root,
            relabelled,
        )  # fmt: skip
    share = val_fraction / (1.0 - holdout_fraction)  # of what the held-out split left
    if not 0 < share < 1:
        raise ValueError(f"val_fraction={val_fraction} with holdout_fraction={holdout_fraction}: together they must stay below 1")
    train, val = stratified_split(samples, val_fraction=share, seed=seed)
    return DataSplits(train, val, scanned.skipped, "split", scanned.excluded, scanned.report, holdout, train_root, relabelled)


def write_holdout_list(samples: Sequence[Sample], root: Path, path: Path) -> Path:
    """CSV ``file,label`` of a split (``file`` relative to ``root``), for ``evaluate --labels``."""
    rows = sorted((s.path.relative_to(root).as_posix(), s.label) for s in samples)
    return write_csv_report(path, ("file", "label"), rows)


class PairBatchSampler(Sampler[list[int]]):
    """Shuffled batches that keep a photo's watermarked and clean versions together.

    Items sharing a key (:attr:`Sample.batch_key`: the pair key, else unique to the
    sample) land in the same batch, so the loss compares the overlay against the same
    photo without it. Deterministic per ``seed`` and epoch (call :meth:`set_epoch`).
    A key with more items than ``batch_size`` makes one larger batch.
    """

    def __init__(self, keys: Sequence[str], batch_size: int, *, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        groups: dict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(keys):
            groups[key].append(index)
        self.groups = [groups[k] for k in sorted(groups)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        order = list(range(len(self.groups)))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        batch: list[int] = []
        for g in order:
            members = self.groups[g]
            if batch and len(batch) + len(members) > self.batch_size:
                yield batch
                batch = []
            batch.extend(members)
        if batch:
            yield batch

    def __len__(self) -> int:
        return sum(1 for _ in self.__iter__())
