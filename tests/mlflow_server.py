"""A real ``mlflow server`` for the tests: a database backend (a PostgreSQL URL from
``tests/pg_server.py``, or SQLite), a local artifact folder it serves itself
(``--serve-artifacts``), listening on 127.0.0.1 only, stopped with its process group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.processes import stop_group
from tests.serving_fixtures import free_port

START_TIMEOUT = 120


class MlflowServer:
    def __init__(self, root: Path, backend_uri: str, *, workers: int = 2) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend_uri = backend_uri
        self.artifacts = self.root / "artifacts"
        self.port = free_port()
        self.workers = workers
        self.log = self.root / "mlflow-server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        mlflow_cli = Path(sys.executable).parent / "mlflow"
        command = [
            str(mlflow_cli), "server", "--backend-store-uri", self.backend_uri, "--artifacts-destination", str(self.artifacts),
            "--serve-artifacts", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.wait_ready()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.uri}/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer /health within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, term_seconds=20.0)
