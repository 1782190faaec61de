"""Settings of the review app and the ``python -m review`` options that fill them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


def default_key_file() -> Path:
    """``$REVIEW_KEY_FILE``, else ``key_file.json`` in the repository root (where serve.sh starts TorchServe)."""
    return Path(os.environ.get("REVIEW_KEY_FILE") or REPO_ROOT / "key_file.json")


@dataclass(frozen=True)
class ReviewConfig:
    """Everything :func:`review.app.create_app` needs; paths are used as given."""

    inference_url: str = "http://127.0.0.1:8080"
    model: str = "watermark"
    key_file: Path = REPO_ROOT / "key_file.json"
    db: Path = Path("artifacts/review/decisions.sqlite")
    photos: Path = Path("artifacts/review/photos")
    max_files: int = 50
    max_file_bytes: int = 20 * MIB  # TorchServe's max_request_size in config.properties
    max_request_bytes: int = 64 * MIB
    workers: int = 4
    connect_timeout: float = 3.0
    read_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_files", "max_file_bytes", "max_request_bytes", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} = {getattr(self, name)}: must be at least 1")
        if self.max_request_bytes < self.max_file_bytes:
            raise ValueError(
                f"max_request_bytes ({self.max_request_bytes}) must be at least max_file_bytes ({self.max_file_bytes})"
            )
        if not self.inference_url.startswith(("http://", "https://")):
            raise ValueError(f"inference URL {self.inference_url!r}: must start with http:// or https://")


def _megabytes(value: str) -> int:
    try:
        mb = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a size in MiB, e.g. 20") from None
    if not 0 < mb <= 1024:
        raise argparse.ArgumentTypeError(f"{value!r}: allowed are sizes above 0 and up to 1024 MiB")
    return int(mb * MIB)


def get_args_parser() -> argparse.ArgumentParser:
    """The options of ``python -m review``."""
    d = ReviewConfig()
    parser = argparse.ArgumentParser(
        prog="python -m review",
        description="The moderators' review page: check photos with the served model (TorchServe), see the "
        "verdict and its heat-map, accept or reject each one; decisions go to SQLite and photos to a "
        "content-addressed folder, for `python -m train review-export`. Binds loopback by default: anyone who "
        "can reach --host:--port can check photos with the server's key.",
    )
    a = parser.add_argument
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    a("--port", type=int, default=8090, help="port to listen on (default 8090)")
    a("--inference-url", default=d.inference_url, help=f"TorchServe inference API (default {d.inference_url})")
    a("--model", default=d.model, help=f"served model name (default {d.model})")
    a(
        "--key-file", type=Path, default=None,
        help="TorchServe's key_file.json, read again whenever a key is refused (default $REVIEW_KEY_FILE, "
        "else key_file.json in the repository root)",
    )
    a("--db", type=Path, default=d.db, help=f"decisions database, SQLite (default {d.db})")
    a("--photos", type=Path, default=d.photos, help=f"folder of checked photos, <sha256>.<ext> (default {d.photos})")
    a("--max-files", type=int, default=d.max_files, help=f"files per upload request (default {d.max_files})")
    a("--max-file-mb", type=_megabytes, default=d.max_file_bytes, dest="max_file_bytes", metavar="MIB",
      help=f"largest photo in MiB (default {d.max_file_bytes // MIB}, TorchServe's own limit)")
    a("--max-request-mb", type=_megabytes, default=d.max_request_bytes, dest="max_request_bytes", metavar="MIB",
      help=f"largest upload request in MiB (default {d.max_request_bytes // MIB})")
    a("--workers", type=int, default=d.workers, help=f"photos sent to TorchServe at once per request (default {d.workers})")
    a("--timeout", type=float, default=d.read_timeout, help=f"seconds to wait for one verdict (default {d.read_timeout:g})")
    return parser


def config_from_args(args: argparse.Namespace) -> ReviewConfig:
    """A :class:`ReviewConfig` from parsed options."""
    return ReviewConfig(
        inference_url=args.inference_url, model=args.model, key_file=args.key_file or default_key_file(),
        db=args.db, photos=args.photos, max_files=args.max_files, max_file_bytes=args.max_file_bytes,
        max_request_bytes=args.max_request_bytes, workers=args.workers, read_timeout=args.timeout,
    )
