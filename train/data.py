"""Scanning a ``positive``/``negative`` image folder: samples, duplicates, pairs, data reports.

The split and the pair batches are in :mod:`train.splits`, relabel files in
:mod:`train.relabel`.

Layout accepted (``DATA`` is what the user passes):

* ``DATA/train/{positive,negative}`` with optional ``DATA/val/{positive,negative}``;
* or ``DATA/{positive,negative}`` directly.

Every file is decoded once with the serving preprocessing (:mod:`handler.preprocess`);
files that fail are skipped and listed in a report, never crash the run.

While decoding, every file gets a fingerprint (:mod:`train.duplicates`): the sha256 of
its bytes and a 256-bit difference hash. Files with the same bytes or hashes within
:data:`~train.duplicates.NEAR_DUPLICATE_MAX_DISTANCE` bits form one duplicate *group*
(transitively); :attr:`Sample.group` keeps a group on one side of the train/validation
split. Same-label duplicates are all kept. A group holding both labels is either

* a **pair**, the same photo with and without a mark: *declared* in ``ROOT/pairs.csv``
  (columns ``positive,negative``, paths relative to ROOT, e.g.
  ``positive/a.jpg,negative/a.jpg``) or *checked* (:func:`train.duplicates.compare_marked`:
  equal but for a local region); or
* a **conflict**: the same photo with no visible difference under both labels, or
  different photos that hash alike. All its members are left out of training and
  validation.

Labels come from the folders, except where an explicit relabel file says otherwise
(:func:`train.relabel.read_relabel_file`, ``--relabel``): each row names one file, its new label
(``positive``, ``negative`` or ``exclude``) and why. Every change is listed in the run's
``reports/relabelled.csv``; nothing is ever relabelled silently.

File names pair nothing: ``positive/a.jpg`` and ``negative/a.jpg`` are unrelated photos
unless declared or checked. :attr:`Sample.pair` is the pair key; samples sharing it are
batched together (:class:`train.splits.PairBatchSampler` over :attr:`Sample.batch_key`).
:func:`write_data_report` lists every group of more than one file.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from handler.preprocess import ImageDecodeError, decode_image, load_image_file
from train import duplicates as dup
from train.io import write_bytes_atomic

log = logging.getLogger(__name__)

CLASSES = ("negative", "positive")  # label 0, label 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
REPORT_COLUMNS = ("group", "file", "label", "kind", "pair", "detail")


@dataclass(frozen=True)
class Sample:
    """One labelled image.

    Attributes:
        path: the image file.
        label: 1 = watermarked, 0 = clean.
        group: duplicate group id; a group never straddles the train/validation split.
            Empty (the default) means a group of its own: the path.
        pair: pair key; samples sharing it are one photo with and without a mark and are
            batched together. None: unpaired.
    """

    path: Path
    label: int
    group: str = ""
    pair: str | None = None

    def __post_init__(self) -> None:
        if not self.group:
            object.__setattr__(self, "group", str(self.path))

    @property
    def batch_key(self) -> str:
        """Key for :class:`PairBatchSampler`: the pair key, else unique to this sample."""
        return self.pair if self.pair is not None else str(self.path)


@dataclass(frozen=True)
class DuplicateEntry:
    """One file of a duplicate group, as listed in the data report.

    Attributes:
        group: the group id (:attr:`Sample.group`).
        path: the file.
        label: 1 = positive, 0 = negative.
        kind: ``exact`` (same bytes as another member), ``near`` (near duplicate), ``pair``
            (one photo with and without a mark) or ``conflict`` (left out).
        pair: the pair key, or None.
        detail: why, in words (naming the other file).
    """

    group: str
    path: Path
    label: int
    kind: str
    pair: str | None
    detail: str


@dataclass
class DataReport:
    """Duplicate groups of more than one file, and how many pairs were declared or checked."""

    entries: list[DuplicateEntry] = field(default_factory=list)
    declared_pairs: int = 0
    checked_pairs: int = 0

    def counts(self) -> dict[str, int]:
        """Summary for logs and metrics.

        ``same_label_duplicates`` counts the files beyond the first of their label in their
        group (kept unless the group is a conflict).
        """
        kinds = Counter(e.kind for e in self.entries)
        return {
            "duplicate_groups": len({e.group for e in self.entries}),
            "exact_duplicate_files": kinds["exact"],
            "near_duplicate_files": kinds["near"],
            "same_label_duplicates": len(self.entries) - len({(e.group, e.label) for e in self.entries}),
            "pairs": self.declared_pairs + self.checked_pairs,
            "declared_pairs": self.declared_pairs,
            "checked_pairs": self.checked_pairs,
            "pair_files": kinds["pair"],
            "conflict_groups": len({e.group for e in self.entries if e.kind == "conflict"}),
            "conflict_files": kinds["conflict"],
        }

    def merged(self, other: DataReport) -> DataReport:
        return DataReport(
            self.entries + other.entries, self.declared_pairs + other.declared_pairs, self.checked_pairs + other.checked_pairs
        )


@dataclass
class ScanResult:
    """What :func:`scan_folder` found.

    Attributes:
        samples: usable images (label conflicts left out).
        skipped: ``(file, reason)`` of files that are not images or do not decode.
        excluded: label conflicts, left out of training and validation.
        report: duplicate groups, pairs and conflicts.
    """

    samples: list[Sample] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    excluded: list[Sample] = field(default_factory=list)
    report: DataReport = field(default_factory=DataReport)

    def counts(self) -> dict[str, int]:
        pos = sum(s.label for s in self.samples)
        return {
            "positive": pos, "negative": len(self.samples) - pos, "skipped": len(self.skipped),
            "excluded": len(self.excluded),
        }  # fmt: skip




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


# ------------------------------------------------------------------ scanning


@dataclass(frozen=True)
class _File:
    path: Path
    rel: str  # relative to the scanned root, "/"-separated (as pairs.csv names it)
    label: int
    fingerprint: dup.Fingerprint


@dataclass(frozen=True)
class _Edge:
    a: int
    b: int
    declared: bool
    detail: str


def _fingerprint_file(path: Path, *, decode: bool) -> dup.Fingerprint:
    """Read ``path`` once; decode it (the usability check) and fingerprint both.

    Raises:
        ImageDecodeError: the file cannot be read or decoded.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror or exc})", reason="unreadable") from None
    return dup.fingerprint(data, decode_image(data, source=str(path)) if decode else None)


def _scan_class(root: Path, label: int, skipped: list[tuple[Path, str]], *, decode: bool) -> list[_File]:
    name = CLASSES[label]
    folder = root / name
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: class folder missing; need {root}/positive and {root}/negative")
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"suffix {path.suffix or '(none)'} is not one of {sorted(IMAGE_SUFFIXES)}"))
            continue
        try:
            fingerprint = _fingerprint_file(path, decode=decode)
        except ImageDecodeError as exc:
            skipped.append((path, str(exc)))
            continue
        files.append(_File(path, path.relative_to(root).as_posix(), label, fingerprint))
    if not files:
        raise ValueError(f"{folder}: no usable images (class {name!r} is empty); allowed suffixes: {sorted(IMAGE_SUFFIXES)}")
    return files


def _declared_edges(root: Path, files: Sequence[_File]) -> list[_Edge]:
    """Pair edges from ``root/pairs.csv``; rows naming a skipped file are dropped with a warning."""
    index = {f.rel: i for i, f in enumerate(files)}
    edges, dropped = [], []
    for row in dup.read_pairs_file(root):
        if row.positive in index and row.negative in index:
            edges.append(_Edge(index[row.positive], index[row.negative], True, f"declared in {dup.PAIRS_FILE} with"))
        else:
            dropped.append(row.line)
    if dropped:
        log.warning("%s: %d pairs name a skipped file (lines %s); ignored", root / dup.PAIRS_FILE, len(dropped), dropped[:5])
    return edges


def _duplicate_sets(files: Sequence[_File], declared: Sequence[_Edge]) -> list[list[int]]:
    """Groups of file indices: same bytes, near-equal hashes or a declared pair (transitive)."""
    sets = dup.DisjointSets(len(files))
    first_with_bytes: dict[str, int] = {}
    for i, f in enumerate(files):
        sets.union(i, first_with_bytes.setdefault(f.fingerprint.sha256, i))
    hashed = [i for i, f in enumerate(files) if f.fingerprint.dhash is not None]
    if hashed:
        hashes = np.stack([files[i].fingerprint.dhash for i in hashed])  # type: ignore[misc]
        for a, b, _ in dup.near_duplicate_pairs(hashes):
            sets.union(hashed[a], hashed[b])
    for edge in declared:
        sets.union(edge.a, edge.b)
    return sets.sets()


class _Comparer:
    """:func:`train.duplicates.compare_marked` of two scanned files, cached.

    Only members of groups that hold both labels are compared, so only those few are
    decoded a second time (keeping a thumbnail of every file would cost 4 KiB each).
    """

    def __init__(self, files: Sequence[_File]) -> None:
        self.files = files
        self.images: dict[int, np.ndarray | None] = {}
        self.results: dict[tuple[int, int], dup.Comparison] = {}

    def __call__(self, a: int, b: int) -> dup.Comparison:
        key = (min(a, b), max(a, b))
        if key not in self.results:
            self.results[key] = self._compare(*key)
        return self.results[key]

    def _compare(self, a: int, b: int) -> dup.Comparison:
        if self.files[a].fingerprint.sha256 == self.files[b].fingerprint.sha256:
            return dup.Comparison("same", 1.0, 0.0)
        image_a, image_b = self._image(a), self._image(b)
        if image_a is None or image_b is None:
            return dup.Comparison("different", 0.0, 0.0)
        return dup.compare_marked(image_a, image_b)

    def _image(self, index: int) -> np.ndarray | None:
        if index not in self.images:
            try:
                self.images[index] = dup.compare_image(load_image_file(self.files[index].path))
            except ImageDecodeError:  # changed since the scan, or never decoded (check_decode=False)
                self.images[index] = None
        return self.images[index]


def _judge_mixed_group(
    members: Sequence[int], files: Sequence[_File], declared: dict[int, list[_Edge]], compare: _Comparer
) -> tuple[list[_Edge], dict[int, str]]:
    """Pair edges of a group holding both labels, and why members without one conflict.

    Members of a declared pair (``declared``: edges by their positive) are trusted. Every
    other member must be checked as a pair with a member of the other label and be the
    *same* photo as none of them.
    """
    edges = [e for i in members for e in declared.get(i, ())]
    vouched = {i for e in edges for i in (e.a, e.b)}
    problems: dict[int, str] = {}
    for i in members:
        if i in vouched:
            continue
        others = [j for j in members if files[j].label != files[i].label]
        found = [(j, compare(i, j)) for j in others]
        same = [(j, c) for j, c in found if c.verdict == "same"]
        paired = [(j, c) for j, c in found if c.verdict == "pair"]
        if same:
            j, c = same[0]
            problems[i] = f"same photo as {files[j].rel} under the other label ({c.describe()})"
        elif not paired:
            j, c = found[0]
            problems[i] = f"hashes like {files[j].rel} (other label) but differs beyond a local region ({c.describe()})"
        else:
            edges += [_Edge(i, j, False, f"checked ({c.describe()}) with") for j, c in paired]
    return edges, problems


def _pair_keys(members: Sequence[int], files: Sequence[_File], edges: Sequence[_Edge]) -> dict[int, str]:
    """Pair key of every member joined by a pair edge: ``pair:`` + its first file."""
    position = {i: k for k, i in enumerate(members)}
    sets = dup.DisjointSets(len(members))
    for e in edges:
        sets.union(position[e.a], position[e.b])
    keys: dict[int, str] = {}
    for component in sets.sets():
        if len(component) > 1:
            first = min((members[k] for k in component), key=lambda i: files[i].rel)
            keys.update({members[k]: f"pair:{files[first].path}" for k in component})
    return keys


def _duplicate_kind(i: int, members: Sequence[int], files: Sequence[_File]) -> tuple[str, str]:
    """``exact`` or ``near`` and the closest other member, for a file that is not paired."""
    mine = files[i].fingerprint
    for j in members:
        if j != i and files[j].fingerprint.sha256 == mine.sha256:
            return "exact", f"same bytes as {files[j].rel}"
    close = [
        (dup.hamming(mine.dhash, files[j].fingerprint.dhash), files[j].rel)
        for j in members
        if j != i and mine.dhash is not None and files[j].fingerprint.dhash is not None
    ]
    if not close:
        return "near", "joined to the group through a declared pair"
    distance, rel = min(close)
    return "near", f"near duplicate of {rel} (dHash distance {distance})"


@dataclass
class _Collected:
    """Scan output in file order, before it becomes a :class:`ScanResult`."""

    samples: dict[int, Sample] = field(default_factory=dict)
    excluded: dict[int, Sample] = field(default_factory=dict)
    report: DataReport = field(default_factory=DataReport)


def _add_conflict(out: _Collected, group: str, members: Sequence[int], files: Sequence[_File], problems: dict[int, str]) -> None:
    first, why = next(iter(problems.items()))
    for i in members:
        detail = problems.get(i, f"in one group with {files[first].rel}: {why}")
        out.excluded[i] = Sample(files[i].path, files[i].label, group)
        out.report.entries.append(DuplicateEntry(group, files[i].path, files[i].label, "conflict", None, detail))


def _count_pairs(report: DataReport, keys: dict[int, str], edges: Sequence[_Edge]) -> None:
    declared = {keys[e.a] for e in edges if e.declared}
    report.declared_pairs += len(declared)
    report.checked_pairs += len(set(keys.values()) - declared)


def _add_group(
    out: _Collected, members: list[int], files: Sequence[_File], declared: dict[int, list[_Edge]], compare: _Comparer
) -> None:
    """Samples (or conflicts) and report entries of one duplicate group."""
    group = str(files[min(members, key=lambda i: files[i].rel)].path)
    edges: list[_Edge] = []
    problems: dict[int, str] = {}
    if len({files[i].label for i in members}) == 2:
        edges, problems = _judge_mixed_group(members, files, declared, compare)
    if problems:
        _add_conflict(out, group, members, files, problems)
        return
    keys = _pair_keys(members, files, edges)
    _count_pairs(out.report, keys, edges)
    partner = {e.b: (e, e.a) for e in reversed(edges)} | {e.a: (e, e.b) for e in reversed(edges)}
    for i in members:
        out.samples[i] = Sample(files[i].path, files[i].label, group, keys.get(i))
        if len(members) == 1:
            continue
        if i in keys:
            edge, other = partner[i]
            kind, detail = "pair", f"{edge.detail} {files[other].rel}"
        else:
            kind, detail = _duplicate_kind(i, members, files)
        out.report.entries.append(DuplicateEntry(group, files[i].path, files[i].label, kind, keys.get(i), detail))


def check_classes_left(root: Path, samples: Sequence[Sample], excluded: Sequence[Sample]) -> None:
    for label, name in enumerate(CLASSES):
        if not any(s.label == label for s in samples):
            gone = [s for s in excluded if s.label == label]
            raise ValueError(
                f"{root / name}: no usable images (class {name!r} is empty once {len(gone)} label conflicts are "
                f"left out, e.g. {gone[0].path} is also filed under the other label); "
                "remove the wrong copies or declare real pairs in " + str(root / dup.PAIRS_FILE)
            )


def scan_folder(root: Path, *, check_decode: bool = True) -> ScanResult:
    """List the images of ``root/positive`` and ``root/negative``, grouped and paired.

    Files with a non-image suffix, or that fail to decode, go to ``skipped`` with the
    reason. Duplicate groups, pairs and label conflicts are resolved as the module
    docstring says; conflicts go to ``excluded``. With ``check_decode=False`` nothing is
    decoded and only byte-identical files and declared pairs are grouped.

    Raises:
        FileNotFoundError: a class folder is missing.
        ValueError: a class has no usable image (none at all, or only label
            conflicts), or ``root/pairs.csv`` has a bad row.
    """
    root = Path(root)
    skipped: list[tuple[Path, str]] = []
    files = [f for label in range(len(CLASSES)) for f in _scan_class(root, label, skipped, decode=check_decode)]
    declared = _declared_edges(root, files)
    by_positive: dict[int, list[_Edge]] = defaultdict(list)
    for edge in declared:
        by_positive[edge.a].append(edge)
    out = _Collected()
    compare = _Comparer(files)
    for members in _duplicate_sets(files, declared):
        _add_group(out, members, files, by_positive, compare)
    samples = [out.samples[i] for i in sorted(out.samples)]
    excluded = [out.excluded[i] for i in sorted(out.excluded)]
    if skipped:
        log.warning("skipped %d unreadable or non-image files under %s", len(skipped), root)
    if excluded:
        log.warning(
            "left out %d files under %s: groups holding both labels that are not a pair (label conflicts)",
            len(excluded), root,
        )  # fmt: skip
    check_classes_left(root, samples, excluded)
    return ScanResult(samples, skipped, excluded, out.report)


# ------------------------------------------------------------------ reports


def write_csv_report(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path


def write_skipped_report(skipped: Sequence[tuple[Path, str]], path: Path) -> Path:
    """CSV of skipped files (``file,reason``), written atomically."""
    return write_csv_report(path, ("file", "reason"), ((str(p), reason) for p, reason in skipped))


def write_data_report(report: DataReport, path: Path) -> Path:
    """CSV of every duplicate group of more than one file, written atomically; logs the counts.

    Columns: ``group,file,label,kind,pair,detail`` (:class:`DuplicateEntry`; label is the
    class name), sorted by group then file.
    """
    entries = sorted(report.entries, key=lambda e: (e.group, str(e.path)))
    rows = ((e.group, str(e.path), CLASSES[e.label], e.kind, e.pair or "", e.detail) for e in entries)
    write_csv_report(path, REPORT_COLUMNS, rows)
    log.info("duplicates: %s; listed in %s", report.counts(), path)
    return path
