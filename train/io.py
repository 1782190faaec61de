"""Writing files atomically: a crash never leaves a half-file that a later step would trust.

Every writer goes through :func:`atomic_write`: the content is written to a temporary
file beside the target (same folder, so the rename stays on one file system), flushed,
and renamed over the target. On any error the temporary file is removed and the target
is untouched.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


class DiskFullError(OSError):
    """Writing failed because the file system is full (or over quota); names the path."""


@contextmanager
def atomic_write(path: Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` when the block succeeds.

    Raises:
        DiskFullError: the file system ran out of space (the message names ``path``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as handle:
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


def write_with(path: Path, writer: Callable[[IO], None], mode: str = "wb") -> None:
    """Call ``writer(handle)`` on a temporary file and rename it over ``path``."""
    with atomic_write(path, mode) as handle:
        writer(handle)
