"""Durable storage of the review page: checked photos and moderators' decisions.

SQLite in WAL mode with ``synchronous=FULL``: every write is its own committed
transaction, so once a call here returns, a crash of the app or the machine loses nothing
it wrote. The page shows "saved" only after :meth:`ReviewStore.decide` has returned.

Two tables:

* ``checks``: one row per photo (by sha256), the latest model answer for it (file name,
  model, version, probability, threshold, verdict, the explanation grid as JSON).
* ``decisions``: one row per (photo, reviewer), ``UNIQUE(photo_sha256, reviewer)`` with
  upsert semantics. A double-click, or the same click sent twice, stores one row; a later,
  different decision by the same reviewer replaces the earlier one (its time too). Each
  row copies the check it was made on (model, version, probability, threshold, verdict),
  so an export needs no other table.

Photo bytes live beside the database, content-addressed (``<sha256>.<ext>``), written
atomically (temporary file, fsync, rename, fsync of the folder) by :func:`save_photo`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

VERDICTS = ("watermark", "clean")
DECISIONS = ("accept", "reject")  # accept = clean (no watermark), reject = watermark
MAX_REVIEWER_CHARS = 100
BUSY_TIMEOUT_MS = 10_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS checks (
    sha256       TEXT PRIMARY KEY,
    file_name    TEXT NOT NULL,
    photo_file   TEXT NOT NULL,
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    probability  REAL NOT NULL,
    threshold    REAL NOT NULL,
    verdict      TEXT NOT NULL CHECK (verdict IN ('watermark', 'clean')),
    explanation  TEXT,
    checked_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS decisions (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    photo_sha256 TEXT NOT NULL,
    file_name    TEXT NOT NULL,
    photo_file   TEXT NOT NULL,
    model        TEXT NOT NULL,
    version      TEXT NOT NULL,
    probability  REAL NOT NULL,
    threshold    REAL NOT NULL,
    verdict      TEXT NOT NULL CHECK (verdict IN ('watermark', 'clean')),
    decision     TEXT NOT NULL CHECK (decision IN ('accept', 'reject')),
    overturned   INTEGER NOT NULL CHECK (overturned IN (0, 1)),
    reviewer     TEXT NOT NULL,
    decided_at   TEXT NOT NULL,
    UNIQUE (photo_sha256, reviewer)
);
"""

DECISION_COLUMNS = (
    "photo_sha256", "file_name", "photo_file", "model", "version", "probability", "threshold",
    "verdict", "decision", "overturned", "reviewer", "decided_at",
)


@dataclass(frozen=True)
class Check:
    """The model's answer for one photo, as the page saw it."""

    sha256: str
    file_name: str
    photo_file: str
    model: str
    version: str
    probability: float
    threshold: float
    verdict: str
    explanation: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one photo, with the check it was made on."""

    photo_sha256: str
    file_name: str
    photo_file: str
    model: str
    version: str
    probability: float
    threshold: float
    verdict: str
    decision: str
    overturned: bool
    reviewer: str
    decided_at: str


def utc_now() -> str:
    """The current time, ISO 8601 in UTC with microseconds (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_overturned(verdict: str, decision: str) -> bool:
    """True when the reviewer's decision disagrees with the model's verdict."""
    return (decision == "reject") != (verdict == "watermark")


def clean_reviewer(name: Any) -> str:
    """The reviewer's name, stripped; a clear ``ValueError`` when empty or too long."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("reviewer: type your name first (a non-empty text)")
    name = " ".join(name.split())
    if len(name) > MAX_REVIEWER_CHARS:
        raise ValueError(f"reviewer: at most {MAX_REVIEWER_CHARS} characters, got {len(name)}")
    return name


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_photo(folder: Path, sha256: str, ext: str, data: bytes) -> str:
    """Store ``data`` as ``folder/<sha256>.<ext>`` atomically; return the file's name.

    An existing file of that name and size is kept (the name is the content's hash).
    Otherwise the bytes go to a temporary file that is fsynced and renamed into place, and
    the folder is fsynced, so the file is either whole or absent.
    """
    if sha256_hex(data) != sha256:
        raise ValueError(f"photo bytes do not match sha256 {sha256}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{sha256}.{ext}"
    target = folder / name
    if target.is_file() and target.stat().st_size == len(data):
        return name
    tmp = folder / f".{name}.tmp-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(folder)
    return name


class ReviewStore:
    """The decisions database at ``path`` (created with its folder on first use).

    Each call opens its own connection, so one store is safe to share between threads.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        """Open (``create``: create if needed) the database at ``path``.

        Raises:
            FileNotFoundError: without ``create``, ``path`` does not exist.
            ValueError: without ``create``, ``path`` is not a decisions database.
        """
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as conn:
                conn.executescript(SCHEMA)
            return
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such decisions database")
        try:
            with self._connect() as conn:
                tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not an SQLite database ({exc})") from None
        if not {"checks", "decisions"} <= tables:
            raise ValueError(f"{self.path}: not a decisions database of the review page (no decisions table)")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)) as conn:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield conn

    def pragmas(self) -> dict[str, Any]:
        """journal_mode and synchronous as a connection of this store sees them."""
        with self._connect() as conn:
            return {
                "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
                "synchronous": conn.execute("PRAGMA synchronous").fetchone()[0],
            }

    def record_check(self, check: Check) -> None:
        """Insert or replace the photo's check (the latest model answer wins); committed on return."""
        if check.verdict not in VERDICTS:
            raise ValueError(f"verdict {check.verdict!r}: allowed are {', '.join(VERDICTS)}")
        explanation = json.dumps(check.explanation) if check.explanation is not None else None
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO checks (sha256, file_name, photo_file, model, version, probability, threshold, verdict,"
                " explanation, checked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT(sha256) DO UPDATE SET file_name=excluded.file_name, photo_file=excluded.photo_file,"
                " model=excluded.model, version=excluded.version, probability=excluded.probability,"
                " threshold=excluded.threshold, verdict=excluded.verdict, explanation=excluded.explanation,"
                " checked_at=excluded.checked_at",
                (check.sha256, check.file_name, check.photo_file, check.model, check.version, check.probability,
                 check.threshold, check.verdict, explanation, utc_now()),
            )
            conn.execute("COMMIT")

    def get_check(self, sha256: str) -> Check | None:
        """The stored check of a photo, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM checks WHERE sha256 = ?", (sha256,)).fetchone()
        if row is None:
            return None
        return Check(
            sha256=row["sha256"], file_name=row["file_name"], photo_file=row["photo_file"], model=row["model"],
            version=row["version"], probability=row["probability"], threshold=row["threshold"],
            verdict=row["verdict"], explanation=json.loads(row["explanation"]) if row["explanation"] else None,
        )

    def decide(self, sha256: str, decision: str, reviewer: Any) -> Decision:
        """Store ``reviewer``'s ``decision`` on a checked photo; committed (fsynced) on return.

        One row per (photo, reviewer): repeating the same decision changes nothing but
        its time, a different one replaces it.

        Raises:
            ValueError: an unknown decision, an empty or too long reviewer name.
            LookupError: the photo was never checked.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision {decision!r}: allowed are accept (clean) and reject (watermark)")
        reviewer = clean_reviewer(reviewer)
        check = self.get_check(sha256)
        if check is None:
            raise LookupError(f"photo {sha256}: not checked on this page, upload it first")
        row = Decision(
            photo_sha256=sha256, file_name=check.file_name, photo_file=check.photo_file, model=check.model,
            version=check.version, probability=check.probability, threshold=check.threshold, verdict=check.verdict,
            decision=decision, overturned=is_overturned(check.verdict, decision), reviewer=reviewer,
            decided_at=utc_now(),
        )
        values = [getattr(row, c) for c in DECISION_COLUMNS]
        values[DECISION_COLUMNS.index("overturned")] = int(row.overturned)
        updates = ", ".join(f"{c}=excluded.{c}" for c in DECISION_COLUMNS if c not in ("photo_sha256", "reviewer"))
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                f"INSERT INTO decisions ({', '.join(DECISION_COLUMNS)}) VALUES ({', '.join('?' * len(values))})"
                f" ON CONFLICT(photo_sha256, reviewer) DO UPDATE SET {updates}",
                values,
            )
            conn.execute("COMMIT")
        return row

    def decisions(self) -> list[Decision]:
        """Every stored decision, oldest first."""
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {', '.join(DECISION_COLUMNS)} FROM decisions ORDER BY decided_at, id").fetchall()
        return [_decision(row) for row in rows]

    def latest_decisions(self) -> list[Decision]:
        """The latest decision of each photo (over all reviewers), ordered by photo sha256."""
        latest: dict[str, Decision] = {}
        for row in self.decisions():  # oldest first: a later row replaces an earlier one
            latest[row.photo_sha256] = row
        return [latest[sha] for sha in sorted(latest)]


def _decision(row: sqlite3.Row) -> Decision:
    values = {c: row[c] for c in DECISION_COLUMNS}
    values["overturned"] = bool(values["overturned"])
    return Decision(**values)
