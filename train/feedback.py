"""Moderators' decisions from the review page back into training folders.

``python -m train review-export --db DB --photos DIR --out OUT`` writes::

    OUT/positive/<sha256>.<ext>   photos decided "reject" (watermark)
    OUT/negative/<sha256>.<ext>   photos decided "accept" (clean)
    OUT/decisions.csv             one row per photo: where it went and the decision behind it

from the latest decision of each photo (over all reviewers). ``--only overturned`` keeps
the photos whose decision disagrees with the model's verdict: the cases the model got
wrong. OUT is built in a staging folder and swapped in whole (``train.io.staged_folder``),
so a failure leaves OUT as it was. Files are named by content, so copying the two folders
into ``DATA/train/positive`` and ``DATA/train/negative`` cannot overwrite a different photo.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from review.store import Decision, ReviewStore
from train.io import staged_folder, write_csv_atomic

SELECTIONS = ("all", "overturned")
LABEL_FOLDERS = {"reject": "positive", "accept": "negative"}
CSV_HEADER = (
    "file", "label", "sha256", "original_name", "model", "version", "probability", "threshold", "verdict",
    "decision", "overturned", "reviewer", "decided_at",
)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def select_decisions(db: Path, only: str = "all") -> list[Decision]:
    """The latest decision of each photo in ``db``; with ``only="overturned"`` those that
    overturn the model's verdict.

    Raises:
        FileNotFoundError: ``db`` does not exist (the message names it).
        ValueError: ``only`` is not one of :data:`SELECTIONS`.
    """
    if only not in SELECTIONS:
        raise ValueError(f"--only {only!r}: allowed are {', '.join(SELECTIONS)}")
    if not Path(db).is_file():
        raise FileNotFoundError(f"--db {db}: no such decisions database (the review page writes it: make review)")
    latest = ReviewStore(db, create=False).latest_decisions()
    return [d for d in latest if only == "all" or d.overturned]


def check_photos(decisions: list[Decision], photos: Path) -> None:
    """Every decided photo is in ``photos`` with the bytes its name promises.

    Raises:
        FileNotFoundError: a photo file is missing (every missing path named, up to 10).
        ValueError: a photo file's bytes do not match its sha256.
    """
    photos = Path(photos)
    if not photos.is_dir():
        raise FileNotFoundError(f"--photos {photos}: no such folder")
    missing = [str(photos / d.photo_file) for d in decisions if not (photos / d.photo_file).is_file()]
    if missing:
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(f"photo file(s) missing: {', '.join(missing[:10])}{more}")
    for d in decisions:
        if _file_sha256(photos / d.photo_file) != d.photo_sha256:
            raise ValueError(f"{photos / d.photo_file}: its bytes do not match sha256 {d.photo_sha256}")


def _csv_row(d: Decision, relative: str) -> list[Any]:
    return [
        relative, LABEL_FOLDERS[d.decision], d.photo_sha256, d.file_name, d.model, d.version, f"{d.probability:.6f}",
        f"{d.threshold:.6f}", d.verdict, d.decision, int(d.overturned), d.reviewer, d.decided_at,
    ]


def export_decisions(db: Path, photos: Path, out: Path, *, only: str = "all", overwrite: bool = False) -> dict[str, Any]:
    """Write the training folders described in the module docstring; return counts.

    Raises:
        FileExistsError: ``out`` exists and is not empty, without ``overwrite``.
        FileNotFoundError, ValueError: see :func:`select_decisions` and :func:`check_photos`.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out}: not empty; pass --overwrite to replace it")
    decisions = select_decisions(db, only)
    check_photos(decisions, photos)
    counts = {"positive": 0, "negative": 0}
    rows = []
    with staged_folder(out) as staging:
        for folder in LABEL_FOLDERS.values():
            (staging / folder).mkdir()
        for d in decisions:
            folder = LABEL_FOLDERS[d.decision]
            shutil.copyfile(Path(photos) / d.photo_file, staging / folder / d.photo_file)
            counts[folder] += 1
            rows.append(_csv_row(d, f"{folder}/{d.photo_file}"))
        write_csv_atomic(staging / "decisions.csv", CSV_HEADER, rows)
    return {"out": str(out), "only": only, **counts, "overturned": sum(d.overturned for d in decisions)}
