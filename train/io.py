"""Every file and folder that training writes goes through here, so a crash never leaves
a half-written artifact that a later step would trust.

* :func:`atomic_write` (and :func:`write_bytes_atomic`, :func:`write_text_atomic`,
  :func:`write_json_atomic`, :func:`write_csv_atomic`, :func:`write_with`): the content
  goes to a temporary file beside the target (same folder, so the rename stays on one
  file system), is flushed and renamed over the target. On any error the temporary file
  is removed and the target is untouched.
* :func:`staged_folder` / :func:`swap_folder`: a folder is built under a temporary name
  beside its target and swapped in whole; the previous folder is removed only after the
  new one is in place, and put back if the swap itself fails.
* :func:`read_json_option`: a JSON file given on the command line, with errors that name
  the option and the file.
* :func:`default_tracking_uri`, :func:`sqlite_path`: the embedded MLflow store that
  training writes by default, and the file behind a ``sqlite:///`` URL.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


class DiskFullError(OSError):
    """Writing failed because the file system is full (or over quota); names the path."""


def _temporary_name(path: Path, what: str) -> Path:
    return path.with_name(f".{path.name}.{what}-{os.getpid()}-{time.monotonic_ns()}")


@contextmanager
def atomic_write(path: Path, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` when the block succeeds.

    Raises:
        DiskFullError: the file system ran out of space (the message names ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, "tmp")
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(exc.errno, f"no space left writing {path}") from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_write(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(path: Path, data: Any, *, sort_keys: bool = True, allow_nan: bool = True) -> None:
    """``data`` as indented JSON (keys sorted unless told otherwise) with a final newline."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=allow_nan) + "\n")


def write_csv_atomic(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A CSV file with ``header`` and ``rows``, written atomically."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def write_with(path: Path, writer: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``writer(handle)`` on a temporary file and rename it over ``path``."""
    with atomic_write(path, mode) as handle:
        writer(handle)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def swap_folder(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` in place of ``target`` (which may not exist).

    The old ``target`` is moved aside first and removed only once ``staging`` is in place;
    if that rename fails, the old ``target`` is put back and the error raised.
    """
    staging, target = Path(staging), Path(target)
    old = None
    if target.exists() or target.is_symlink():
        old = _temporary_name(target, "old")
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        _remove(old)


@contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield an empty folder beside ``target``; swap it in when the block succeeds.

    On any error the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _temporary_name(target, "tmp")
    staging.mkdir()
    try:
        yield staging
        swap_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def read_json_option(path: Path, option: str) -> Any:
    """The JSON content of a file given as ``option``; errors name the option and the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{option} {path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{option} {path}: not valid JSON ({exc})") from None


SQLITE_PREFIX = "sqlite:///"


def default_tracking_uri(output: str | Path = "artifacts") -> str:
    """The embedded MLflow store (an SQLite file, no server) that training writes under
    ``OUTPUT``: ``sqlite:///OUTPUT/mlflow/mlflow.db`` with an absolute path."""
    return f"{SQLITE_PREFIX}{(Path(output) / 'mlflow' / 'mlflow.db').resolve()}"


def sqlite_path(url: str) -> Path | None:
    """The file behind a ``sqlite:///`` URL (MLflow store or Optuna storage), else None."""
    return Path(url[len(SQLITE_PREFIX):]) if url.startswith(SQLITE_PREFIX) else None


def redact_url(url: str) -> str:
    """``url`` with its password (``scheme://user:PASSWORD@host``) shown as ``***``, for logs,
    MLflow tags and error messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
