"""A real TorchServe 0.12 for the integration tests (a plain helper module, not a test file).

:class:`Server` runs ``torchserve --foreground`` from a private directory (so key_file.json
and logs/ land there) with a private TMPDIR (TorchServe's pid file is
``$TMPDIR/.model_server.pid``, shared by every torchserve of the user otherwise), on free
loopback ports, with the repository's config.properties plus per-test overrides. Token
authorisation stays on. Every request has a timeout; :meth:`Server.stop` always stops the
server and its whole process group (Java frontend and Python workers).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests import serving_fixtures as sf
from tests.processes import stop_group

REPO = sf.REPO_ROOT
VENV_BIN = REPO / ".venv" / "bin"
PYTHON = str(VENV_BIN / "python") if (VENV_BIN / "python").exists() else shutil.which("python3")
TORCHSERVE = str(VENV_BIN / "torchserve") if (VENV_BIN / "torchserve").exists() else shutil.which("torchserve")
CREATE_MAR = REPO / "scripts" / "create_mar.sh"
TIMEOUT = (5, 30)  # (connect, read) seconds for every request
READY_TIMEOUT = 90

HAVE_SERVER = TORCHSERVE is not None and (shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME")))
needs_server = pytest.mark.skipif(not HAVE_SERVER, reason="torchserve and Java are needed")


def create_mar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CREATE_MAR), *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=120
    )


def repo_config() -> dict[str, str]:
    return sf.load_properties(REPO / "config.properties")


class Server:
    """One TorchServe; ``overrides`` replace keys of the repository's config.properties."""

    def __init__(self, root: Path, export_dir: Path | None = None, overrides: dict[str, str] | None = None) -> None:
        self.root = root
        self.export_dir = export_dir
        self.overrides = dict(overrides or {})
        self.run_dir = root / "run"
        self.tmp_dir = root / "tmp"
        self.store = root / "store"
        self.ports = {name: sf.free_port() for name in ("inference", "management", "metrics", "grpc_i", "grpc_m")}
        self.env = {**os.environ, "TMPDIR": str(self.tmp_dir), "TEMP": str(self.tmp_dir)}
        self.proc: subprocess.Popen | None = None
        self.out_file = self.run_dir / "torchserve.out"

    @property
    def inference(self) -> str:
        return f"http://127.0.0.1:{self.ports['inference']}"

    @property
    def management(self) -> str:
        return f"http://127.0.0.1:{self.ports['management']}"

    @property
    def metrics(self) -> str:
        return f"http://127.0.0.1:{self.ports['metrics']}"

    @property
    def predict_url(self) -> str:
        return f"{self.inference}/predictions/watermark"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.properties"

    def key(self, which: str = "inference") -> str:
        return json.loads(self.key_file.read_text())[which]["key"]

    def auth(self, which: str = "inference") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key(which)}"}

    def write_config(self) -> Path:
        props = repo_config()
        assert props.get("disable_token_authorization", "false").lower() != "true"
        props.update(
            inference_address=self.inference,
            management_address=self.management,
            metrics_address=self.metrics,
            grpc_inference_port=str(self.ports["grpc_i"]),
            grpc_management_port=str(self.ports["grpc_m"]),
            model_store=str(self.store),
        )
        if "metrics_config" in props and not Path(props["metrics_config"]).is_absolute():
            props["metrics_config"] = str(REPO / props["metrics_config"])  # the server runs in run_dir
        props.update(self.overrides)
        self.config_file.write_text(sf.dump_properties(props), encoding="utf-8")
        return self.config_file

    def start(self) -> None:
        for d in (self.run_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        with open(self.out_file, "wb") as out:
            # --foreground: the launcher waits for (and reaps) Java, so stopping is observable.
            self.proc = subprocess.Popen(
                [TORCHSERVE, "--start", "--foreground", "--ts-config", str(config)],
                cwd=self.run_dir, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.wait_ready()

    def log_tail(self, n: int = 60) -> str:
        parts = []
        for path in (self.out_file, self.run_dir / "logs" / "model_log.log"):
            if path.exists():
                parts.append(f"== {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:]))
        return "\n".join(parts)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"torchserve exited with {self.proc.returncode}\n{self.log_tail()}")
            if self.key_file.exists():
                try:
                    ping = requests.get(f"{self.inference}/ping", headers=self.auth(), timeout=(2, 5))
                    if ping.status_code == 200 and self.worker_status() == ["READY"]:
                        return
                except (requests.RequestException, ValueError, KeyError):
                    pass
            time.sleep(0.5)
        pytest.fail(f"torchserve not ready after {timeout}s\n{self.log_tail()}")

    def describe(self, version: str | None = None) -> dict:
        """GET /models/watermark[/version] on the management API (the default version if None)."""
        url = f"{self.management}/models/watermark" + (f"/{version}" if version else "")
        resp = requests.get(url, headers=self.auth("management"), timeout=TIMEOUT)
        resp.raise_for_status()
        return resp.json()[0]

    def worker_status(self, version: str | None = None) -> list[str]:
        return [w["status"] for w in self.describe(version)["workers"]]

    def worker_pids(self, version: str | None = None) -> list[int]:
        return [w["pid"] for w in self.describe(version)["workers"]]

    def model_log(self) -> str:
        log = self.run_dir / "logs" / "model_log.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def batch_sizes(self) -> list[tuple[int, int]]:
        """(requests, rejected) of every batch the handler logged so far."""
        return [
            (int(m.group(1)), int(m.group(3)))
            for m in re.finditer(r"watermark batch: (\d+) requests, (\d+) decoded, (\d+) rejected", self.model_log())
        ]

    def settled_batch_sizes(self, quiet: float = 0.5, timeout: float = 10.0) -> list[tuple[int, int]]:
        """:meth:`batch_sizes` once the log has stopped growing for ``quiet`` seconds.

        The worker's log lines reach the file asynchronously, so a batch of an earlier
        request can appear after the call that answered it returned.
        """
        deadline = time.monotonic() + timeout
        last = self.batch_sizes()
        while time.monotonic() < deadline:
            time.sleep(quiet)
            now = self.batch_sizes()
            if now == last:
                return now
            last = now
        return last

    def prometheus(self) -> str:
        resp = requests.get(f"{self.metrics}/metrics", timeout=TIMEOUT)
        resp.raise_for_status()
        return resp.text

    def process_group(self) -> list[int]:
        """PIDs in the server's process group (launcher, Java frontend, Python workers)."""
        if self.proc is None:
            return []
        found = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True, timeout=10)
        return [int(p) for p in found.stdout.split()]

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            subprocess.run(
                [TORCHSERVE, "--stop"], cwd=self.run_dir, env=self.env, timeout=60,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            self.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pass
        finally:
            # Java and its Python workers share the launcher's process group.
            stop_group(self.proc, term_seconds=5.0, kill_seconds=10.0)

    def assert_stopped(self) -> None:
        leftover = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True, timeout=10)
        assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"
        assert not self.key_file.exists()  # torchserve --stop removes it


def serve(root: Path, store_setup, overrides: dict[str, str] | None = None):
    """Generator for module fixtures: build the store with ``store_setup(server)``, start, yield, stop."""
    if not HAVE_SERVER:
        pytest.skip("torchserve and Java are needed")
    srv = Server(root, overrides=overrides)
    srv.store.mkdir(parents=True, exist_ok=True)
    store_setup(srv)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
    srv.assert_stopped()


def serve_tiny_export(root: Path, overrides: dict[str, str] | None = None):
    """:func:`serve` of an archive built by create_mar.sh from a tiny export in ``root/export``
    (``srv.export_dir`` names it, for expected probabilities)."""
    export_dir = sf.build_tiny_export(root / "export")

    def build_store(srv: Server) -> None:
        srv.export_dir = export_dir
        built = create_mar("--export-dir", str(export_dir), "--model-store", str(srv.store))
        assert built.returncode == 0, built.stderr

    yield from serve(root, build_store, overrides)


def put_image(srv: Server, data: bytes, **kwargs) -> requests.Response:
    """Like `curl -T photo.jpg -H "Authorization: Bearer $KEY" URL` (raw PUT body)."""
    headers = kwargs.pop("headers") if "headers" in kwargs else srv.auth()
    timeout = kwargs.pop("timeout", TIMEOUT)
    return requests.put(kwargs.pop("url", srv.predict_url), data=data, headers=headers, timeout=timeout, **kwargs)


def concurrent_puts(srv: Server, bodies: list[bytes], headers: list[dict] | None = None) -> list[requests.Response]:
    """Send all bodies at once (threads released together by a barrier); responses in order."""
    barrier = threading.Barrier(len(bodies))
    auth = srv.auth()
    extra = headers or [{} for _ in bodies]

    def send(item: tuple[bytes, dict]) -> requests.Response:
        body, more = item
        barrier.wait(timeout=10)
        return put_image(srv, body, headers={**auth, **more})

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, zip(bodies, extra), timeout=90))


def parse_prometheus(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric: {sorted label items: value} from the Prometheus text format."""
    samples = {}
    pattern = re.compile(r"^" + re.escape(name) + r"(?:\{(.*)\})?\s+(\S+)\s*$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            samples[tuple(sorted(labels.items()))] = float(match.group(2))
    return samples


def metric_by(text: str, name: str, label: str, **where: str) -> dict[str, float]:
    """Sum of a metric's samples by one label, keeping samples whose labels match ``where``."""
    totals: dict[str, float] = {}
    for labels, value in parse_prometheus(text, name).items():
        labels = dict(labels)
        if all(labels.get(k) == v for k, v in where.items()) and label in labels:
            totals[labels[label]] = totals.get(labels[label], 0.0) + value
    return totals
