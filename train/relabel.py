"""Relabel files: explicit, listed label fixes of a train folder (``--relabel FILE``).

A relabel file is a CSV with ``file,label,reason`` rows: ``file`` relative to the train
folder, ``label`` one of ``positive``, ``negative`` or ``exclude``. The fixes are applied
after the scan and before any split; every change is listed in the run's
``reports/relabelled.csv``. Nothing is ever relabelled silently.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from train.data import CLASSES, Sample, ScanResult, check_classes_left, write_csv_report

log = logging.getLogger(__name__)

RELABEL_COLUMNS = ("file", "label", "reason")
RELABEL_VALUES: dict[str, int | None] = {"negative": 0, "positive": 1, "exclude": None}
RELABELLED_COLUMNS = ("file", "folder_label", "label", "reason", "note")


@dataclass(frozen=True)
class Relabel:
    """One row of a relabel file: ``file`` (relative to the train folder), new label (None = left out), why."""

    file: str
    label: int | None
    reason: str


@dataclass(frozen=True)
class RelabelRow:
    """What a relabel row did, as listed in ``reports/relabelled.csv``."""

    file: str
    folder_label: str
    label: str
    reason: str
    note: str


def read_relabel_file(path: Path) -> list[Relabel]:
    """Read a relabel CSV with columns ``file,label,reason``.

    ``file`` is relative to the train folder (e.g. ``negative/Sample_12.jpg``), ``label``
    is ``positive``, ``negative`` or ``exclude``, ``reason`` says why (required).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a missing column, a bad label, an empty reason, an absolute or ``..``
            path, or a file named twice; the message names the line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--relabel {path}: file not found")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in RELABEL_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"--relabel {path}: columns {', '.join(missing)} missing; need {','.join(RELABEL_COLUMNS)}")
        rows: list[Relabel] = []
        seen: dict[str, int] = {}
        for line, row in enumerate(reader, start=2):
            file = (row["file"] or "").strip()
            value = (row["label"] or "").strip().lower()
            reason = (row["reason"] or "").strip()
            where = f"--relabel {path} line {line}"
            if not file or file.startswith("/") or ".." in Path(file).parts:
                raise ValueError(f"{where}: file {file!r}: give a path relative to the train folder, e.g. negative/a.jpg")
            if value not in RELABEL_VALUES:
                raise ValueError(f"{where}: label {row['label']!r}: allowed are {', '.join(RELABEL_VALUES)}")
            if not reason:
                raise ValueError(f"{where}: {file}: reason is empty; say why the label changes")
            if file in seen:
                raise ValueError(f"{where}: {file} is already relabelled on line {seen[file]}")
            seen[file] = line
            rows.append(Relabel(file, RELABEL_VALUES[value], reason))
    return rows


def _label_name(label: int | None) -> str:
    return "exclude" if label is None else CLASSES[label]


def apply_relabels(scanned: ScanResult, root: Path, relabels: Sequence[Relabel]) -> tuple[ScanResult, list[RelabelRow]]:
    """``scanned`` with the relabel rows applied, and what each row did.

    A relabelled file leaves its pair (it is no longer the clean or marked half of one).
    A label conflict whose members all end up under one label (or left out) returns to
    the data as an ordinary duplicate group.

    Raises:
        ValueError: a row names a file that is not a scanned image of ``root``, or a
            class ends up empty.
    """
    root = Path(root)
    order = {s.path: i for i, s in enumerate(scanned.samples + scanned.excluded)}
    current = {s.path.relative_to(root).as_posix(): s for s in scanned.samples + scanned.excluded}
    in_conflict = {s.path for s in scanned.excluded}
    changed: dict[Path, int | None] = {}
    for row in relabels:
        sample = current.get(row.file)
        if sample is None:
            skipped = {p.relative_to(root).as_posix() for p, _ in scanned.skipped if p.is_relative_to(root)}
            why = "was skipped as unreadable (reports/skipped.csv)" if row.file in skipped else "is not an image there"
            raise ValueError(f"relabel: {root / row.file} {why}; files are named relative to {root}")
        changed[sample.path] = row.label
    keep: list[Sample] = []
    excluded: list[Sample] = []
    groups: dict[str, list[Sample]] = defaultdict(list)
    for s in scanned.samples + scanned.excluded:
        label = changed.get(s.path, s.label)
        if label is None:
            excluded.append(s)
            continue
        moved = Sample(s.path, label, s.group, None) if s.path in changed else s
        if s.path in in_conflict:
            groups[s.group].append(moved)
        else:
            keep.append(moved)
    resolved: set[str] = set()
    for group, members in groups.items():
        if len({m.label for m in members}) == 1:
            keep.extend(members)
            resolved.add(group)
        else:
            excluded.extend(members)
    rows = []
    for row in relabels:
        sample = current[row.file]
        note = "left out" if row.label is None else "relabelled"
        if sample.path in in_conflict and row.label is not None:
            note = "label conflict resolved: back in the data" if sample.group in resolved else "still a label conflict: left out"
        rows.append(RelabelRow(row.file, CLASSES[sample.label], _label_name(row.label), row.reason, note))
    keep.sort(key=lambda s: order[s.path])
    excluded.sort(key=lambda s: order[s.path])
    log.info("relabel: %d files changed (%s)", len(rows), dict(Counter(r.note for r in rows)))
    check_classes_left(root, keep, excluded)
    return ScanResult(keep, scanned.skipped, excluded, scanned.report), rows


def write_relabel_report(rows: Sequence[RelabelRow], path: Path) -> Path:
    """CSV of what a relabel file changed (``file,folder_label,label,reason,note``), written atomically."""
    return write_csv_report(path, RELABELLED_COLUMNS, ((r.file, r.folder_label, r.label, r.reason, r.note) for r in rows))
