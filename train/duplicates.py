"""Image fingerprints, near-duplicate search and the "same photo plus a mark" check.

* :func:`fingerprint`: sha256 of the file bytes (exact duplicates) and a 256-bit
  difference hash of the decoded image (near duplicates: re-encodes, resizes).
* :func:`near_duplicate_pairs`: every pair of hashes within
  :data:`NEAR_DUPLICATE_MAX_DISTANCE` bits, vectorised in row chunks.
* :class:`DisjointSets`: union-find that turns those pairs into groups.
* :func:`compare_marked`: whether a positive and a negative of one group are the same
  photo with and without a watermark (``pair``), the same photo with no visible
  difference (``same``) or different photos (``different``).
* :func:`read_pairs_file` / :func:`write_pairs_file`: pairs declared in ``ROOT/pairs.csv``
  (columns ``positive,negative``, paths relative to ROOT such as ``positive/a.jpg``).

The thresholds were measured on the team's 5,783 real 512 x 512 seller photos (see the
constants). Only Pillow and numpy are needed (no torch: the demo generator uses it).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from train.io import write_bytes_atomic

DHASH_SIZE = 16  # 16 x 16 horizontal gradient signs = 256 bits, stored as 32 packed bytes
# Lanczos on the float grayscale image (Pillow box-reduces first, reducing_gap 2). Of
# box, bilinear, bicubic and Lanczos, on 8-bit or float grayscale, it kept re-encodes
# closest and different photos farthest apart: float avoids the ties that 8-bit
# rounding makes in flat product backgrounds (8-bit box: 1,800 pairs of different real
# photos within 16 bits and groups chained to 236 files; this: 157 pairs, largest group 8).
DHASH_FILTER = Image.Resampling.LANCZOS
DHASH_REDUCING_GAP = 2.0
# Measured on the team's real photos (512 x 512 JPEG): a JPEG q70 re-encode stays within
# 10 bits for 98.5-99 % of them, a 0.5x resize and back for 99 % (the rest, up to 24, are
# near-flat images). Of the 16.7 M pairs of different photos, 89 are within 10 bits, and
# those are one product shot in another colour or with another size label; from ~11 bits
# on, unrelated products on white start to appear.
NEAR_DUPLICATE_MAX_DISTANCE = 10

COMPARE_SIZE = 64  # the mark check compares both images as 64 x 64 grayscale (box filter)
# Gray levels: a JPEG q50-q70 re-encode stays within it on every pixel, a 0.5x resize and
# back on all but < 0.5 % (300 real photos).
PIXEL_TOLERANCE = 12.0
# "Most of the image is equal": a pair needs >= 85 % of the pixels within the tolerance;
# 99 % of train.synth's watermarks change less (400 real photos), different colour
# variants of one product shot often change more (17-23 % in the real set).
PAIR_MIN_EQUAL = 0.85
MARK_BLOCK = 4  # a mark must show as a 4 x 4 block (1/16 of the side) that clearly differs
# Mean absolute difference (gray levels) of the most different block. Copies of one photo
# stay below it (JPEG q50-q70 <= 2.2; 0.5x or 0.25x resize and back <= 9.6; 300 real
# photos), the checked pairs of the real set reach 15-79 (corner logos 20-53). About 40 %
# of train.synth's watermarks are too faint to reach it: generated pairs are declared.
MARK_MIN_BLOCK_DIFF = 12.0


@dataclass(frozen=True)
class Fingerprint:
    """Identity of one image file.

    Attributes:
        sha256: hex digest of the file bytes.
        dhash: the 256-bit difference hash as 32 packed ``uint8``; None when the file was
            not decoded (only exact duplicates are found then).
    """

    sha256: str
    dhash: np.ndarray | None


@dataclass(frozen=True)
class Comparison:
    """How a positive and a negative of one duplicate group differ.

    Attributes:
        verdict: ``pair`` (equal but for a local region: the mark), ``same`` (no visible
            difference) or ``different`` (more than a local region differs).
        equal_fraction: share of pixels within :data:`PIXEL_TOLERANCE`.
        mark_strength: mean absolute difference of the most different block.
    """

    verdict: str
    equal_fraction: float
    mark_strength: float

    def describe(self) -> str:
        return f"{100 * (1 - self.equal_fraction):.1f} % of pixels differ, strongest block {self.mark_strength:.1f} levels"


def dhash(image: Image.Image) -> np.ndarray:
    """256-bit difference hash: grayscale, 17 x 16, sign of each horizontal step."""
    gray = image.convert("L").convert("F")
    small = gray.resize((DHASH_SIZE + 1, DHASH_SIZE), DHASH_FILTER, reducing_gap=DHASH_REDUCING_GAP)
    values = np.asarray(small, dtype=np.float32)
    return np.packbits(values[:, 1:] > values[:, :-1])


def fingerprint(data: bytes, image: Image.Image | None) -> Fingerprint:
    """Fingerprint of a file's bytes and, when given, its decoded (upright RGB) image."""
    return Fingerprint(hashlib.sha256(data).hexdigest(), None if image is None else dhash(image))


def _row_chunks(count: int, max_cells: int) -> Iterator[tuple[int, int]]:
    rows = max(1, max_cells // max(count, 1))
    for start in range(0, count, rows):
        yield start, min(start + rows, count)


def near_duplicate_pairs(
    hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_MAX_DISTANCE, *, max_cells: int = 1 << 22
) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, whose hashes differ in at most ``max_distance`` bits.

    Args:
        hashes: ``[N, 32]`` packed ``uint8`` hashes (:func:`dhash`).
        max_distance: largest Hamming distance reported.
        max_cells: rows x columns compared at once (about 10 bytes of memory each).

    Returns:
        ``[K, 3]`` int64 array of ``(i, j, distance)``, sorted by ``i`` then ``j``.
    """
    count = len(hashes)
    if count < 2:
        return np.zeros((0, 3), dtype=np.int64)
    words = np.ascontiguousarray(hashes, dtype=np.uint8).view(np.uint64)  # [N, 4]
    found: list[np.ndarray] = []
    for start, stop in _row_chunks(count, max_cells):
        # rows start..stop against columns start..N: the upper triangle and a little more
        distance = np.zeros((stop - start, count - start), dtype=np.uint16)
        for w in range(words.shape[1]):
            distance += np.bitwise_count(words[start:stop, w, None] ^ words[None, start:, w])
        rows, cols = np.nonzero(distance <= max_distance)
        keep = rows < cols
        rows, cols = rows[keep], cols[keep]
        found.append(np.stack([rows + start, cols + start, distance[rows, cols]], axis=1).astype(np.int64))
    return np.concatenate(found)


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Bits that differ between two packed hashes."""
    return int(np.bitwise_count(np.bitwise_xor(a, b)).sum())


class DisjointSets:
    """Union-find over ``0..n-1``; the root of a set is its smallest member."""

    def __init__(self, count: int) -> None:
        self.parent = list(range(count))

    def find(self, item: int) -> int:
        root = item
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[item] != root:  # path compression
            self.parent[item], item = root, self.parent[item]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def sets(self) -> list[list[int]]:
        """Every set as a sorted list, ordered by smallest member."""
        members: dict[int, list[int]] = {}
        for item in range(len(self.parent)):
            members.setdefault(self.find(item), []).append(item)
        return [members[root] for root in sorted(members)]


def compare_image(image: Image.Image) -> np.ndarray:
    """The image as :data:`COMPARE_SIZE` squared float grayscale, for :func:`compare_marked`."""
    gray = image.convert("L").convert("F").resize((COMPARE_SIZE, COMPARE_SIZE), Image.Resampling.BOX)
    return np.asarray(gray, dtype=np.float32)


def compare_marked(a: np.ndarray, b: np.ndarray) -> Comparison:
    """Judge two :func:`compare_image` arrays: one photo with and without a mark, or not.

    ``pair`` when at least :data:`PAIR_MIN_EQUAL` of the pixels are equal within
    :data:`PIXEL_TOLERANCE` and some :data:`MARK_BLOCK` block differs by at least
    :data:`MARK_MIN_BLOCK_DIFF` on average; ``same`` when no block does; else ``different``.
    """
    diff = np.abs(a - b)
    equal = float((diff <= PIXEL_TOLERANCE).mean())
    blocks = COMPARE_SIZE // MARK_BLOCK
    strength = float(diff.reshape(blocks, MARK_BLOCK, blocks, MARK_BLOCK).mean(axis=(1, 3)).max())
    if equal < PAIR_MIN_EQUAL:
        verdict = "different"
    elif strength < MARK_MIN_BLOCK_DIFF:
        verdict = "same"
    else:
        verdict = "pair"
    return Comparison(verdict, equal, strength)


# ------------------------------------------------------------------ declared pairs

PAIRS_FILE = "pairs.csv"  # at the root of a scanned folder, beside positive/ and negative/
PAIR_COLUMNS = ("positive", "negative")


@dataclass(frozen=True)
class DeclaredPair:
    """One row of ``pairs.csv``: paths relative to the folder's root, ``/``-separated."""

    line: int
    positive: str
    negative: str


def _declared_path(source: Path, line: int, column: str, value: str | None) -> str:
    where = f"{source}: line {line}: {column}"
    if value is None or not value.strip():
        raise ValueError(f"{where} is empty; expected a path like {column}/photo.jpg, relative to {source.parent}")
    rel = PurePosixPath(value.strip().replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2 or rel.parts[0] != column:
        raise ValueError(
            f"{where} {value!r} is not a file under {column}/; paths are relative to {source.parent}, e.g. {column}/photo.jpg"
        )
    if not (source.parent / rel).is_file():
        raise ValueError(f"{where} {value!r}: no such file {source.parent / rel}")
    return rel.as_posix()


def read_pairs_file(root: Path) -> list[DeclaredPair]:
    """The pairs declared in ``root/pairs.csv`` (columns ``positive,negative``); [] without one.

    Raises:
        ValueError: an unknown or missing column, an empty value, a path outside its
            class folder, or a file that does not exist; the message names the file,
            the line and the value.
    """
    source = Path(root) / PAIRS_FILE
    if not source.is_file():
        return []
    with source.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames
        if header is None:
            return []  # an empty file declares nothing
        for name in header:
            if name not in PAIR_COLUMNS:
                raise ValueError(f"{source}: line 1: unknown column {name!r}; expected the header {','.join(PAIR_COLUMNS)}")
        for name in PAIR_COLUMNS:
            if name not in header:
                raise ValueError(f"{source}: line 1: column {name!r} missing; expected the header {','.join(PAIR_COLUMNS)}")
        pairs = []
        for row in reader:
            if row.get(None):  # type: ignore[call-overload]
                raise ValueError(f"{source}: line {reader.line_num}: more values than the columns {','.join(PAIR_COLUMNS)}")
            paths = [_declared_path(source, reader.line_num, column, row[column]) for column in PAIR_COLUMNS]
            pairs.append(DeclaredPair(reader.line_num, *paths))
    return pairs


def write_pairs_file(root: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """Write ``root/pairs.csv`` atomically from ``(positive, negative)`` relative paths."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(PAIR_COLUMNS)
    writer.writerows(pairs)
    path = Path(root) / PAIRS_FILE
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))
    return path
