"""Scanning a ``positive``/``negative`` image folder, splitting it, and batching pairs.

Layout accepted (``DATA`` is what the user passes):

* ``DATA/train/{positive,negative}`` with optional ``DATA/val/{positive,negative}``;
* or ``DATA/{positive,negative}`` directly.

Every file is decoded once with the serving preprocessing (:mod:`handler.preprocess`);
files that fail are skipped and listed in a report, never crash the run.
"""

from __future__ import annotations

import csv
import logging
import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch.utils.data import Sampler

from handler.preprocess import ImageDecodeError, load_image_file

log = logging.getLogger(__name__)

CLASSES = ("negative", "positive")  # label 0, label 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 1 = watermarked

    @property
    def group(self) -> str:
        """Pair key: a positive and a negative with the same file stem are one crop."""
        return self.path.stem


@dataclass
class ScanResult:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        pos = sum(s.label for s in self.samples)
        return {"positive": pos, "negative": len(self.samples) - pos, "skipped": len(self.skipped)}


@dataclass
class DataSplits:
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[Path, str]]
    val_source: str  # "folder" or "split"


def resolve_train_root(data: Path) -> tuple[Path, Path | None]:
    """Find the train folder (and a val folder when one exists) under ``data``."""
    data = Path(data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: not a folder; expected {data}/train/positive and {data}/train/negative")
    if (data / "train").is_dir():
        val = data / "val"
        return data / "train", val if val.is_dir() else None
    if (data / "positive").is_dir() or (data / "negative").is_dir():
        return data, None
    raise FileNotFoundError(
        f"--data {data}: found neither {data}/train/ nor {data}/positive/; "
        "expected folders positive/ (watermarked) and negative/ (clean)"
    )


def scan_folder(root: Path, *, check_decode: bool = True) -> ScanResult:
    """List the images of ``root/positive`` and ``root/negative``.

    Files with a non-image suffix, or that fail to decode, go to ``skipped`` with the
    reason. A missing class folder, or a class with no usable image, is an error.
    """
    result = ScanResult()
    for label, name in enumerate(CLASSES):
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: class folder missing; need {root}/positive and {root}/negative")
        usable = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.name.startswith("."):
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                result.skipped.append((path, f"suffix {path.suffix or '(none)'} is not one of {sorted(IMAGE_SUFFIXES)}"))
                continue
            if check_decode:
                try:
                    load_image_file(path)
                except ImageDecodeError as exc:
                    result.skipped.append((path, str(exc)))
                    continue
            result.samples.append(Sample(path, label))
            usable += 1
        if usable == 0:
            raise ValueError(f"{folder}: no usable images (class {name!r} is empty); allowed suffixes: {sorted(IMAGE_SUFFIXES)}")
    if result.skipped:
        log.warning("skipped %d unreadable or non-image files under %s", len(result.skipped), root)
    return result


def stratified_split(
    samples: Sequence[Sample], *, val_fraction: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split keeping class ratios, never separating a positive/negative pair.

    Groups (file stems) are assigned whole: a group goes to validation when that
    moves its classes' validation counts towards ``val_fraction``.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction={val_fraction!r}: allowed is 0 < fraction < 1")
    groups: dict[tuple[str, str], list[Sample]] = defaultdict(list)
    for s in samples:
        groups[(str(s.path.parent.parent), s.group)].append(s)
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


def load_splits(data: Path, *, val_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Scan ``data`` and return train/validation samples plus skipped files."""
    train_root, val_root = resolve_train_root(data)
    scanned = scan_folder(train_root)
    if val_root is not None:
        val_scan = scan_folder(val_root)
        return DataSplits(scanned.samples, val_scan.samples, scanned.skipped + val_scan.skipped, "folder")
    train, val = stratified_split(scanned.samples, val_fraction=val_fraction, seed=seed)
    return DataSplits(train, val, scanned.skipped, "split")


def write_skipped_report(skipped: Sequence[tuple[Path, str]], path: Path) -> Path:
    """CSV of skipped files (``file,reason``), written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows((str(p), reason) for p, reason in skipped)
    tmp.replace(path)
    return path


class PairBatchSampler(Sampler[list[int]]):
    """Shuffled batches that keep a crop's watermarked and clean versions together.

    Items sharing a group key (file stem) land in the same batch, so the loss
    compares the overlay against the same photo without it. Deterministic per
    ``seed`` and epoch (call :meth:`set_epoch`).
    """

    def __init__(self, group_keys: Sequence[str], batch_size: int, *, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be >= 1")
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        groups: dict[str, list[int]] = defaultdict(list)
        for index, key in enumerate(group_keys):
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
