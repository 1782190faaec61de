"""A real TorchServe 0.12 on free loopback ports, serving a .mar built by scripts/create_mar.sh.

The server runs from a temporary directory (so key_file.json and logs/ land there) with a
private TMPDIR/TEMP (TorchServe's pid file lives in $TMPDIR/.model_server.pid and is
shared by every torchserve of the user otherwise). Token authorisation stays on.
Every request has a timeout; the fixture always stops the server and its process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from tests import serving_fixtures as sf

pytestmark = pytest.mark.integration

REPO = sf.REPO_ROOT
VENV_BIN = REPO / ".venv" / "bin"
TORCHSERVE = str(VENV_BIN / "torchserve") if (VENV_BIN / "torchserve").exists() else shutil.which("torchserve")
CREATE_MAR = REPO / "scripts" / "create_mar.sh"
SERVE_SH = REPO / "scripts" / "serve.sh"
TIMEOUT = (5, 30)  # (connect, read) seconds for every request
READY_TIMEOUT = 90
CONCURRENCY = 8
PROB_TOL = 2e-6

needs_server = pytest.mark.skipif(
    TORCHSERVE is None or shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
    reason="torchserve and Java are needed",
)


# ------------------------------------------------------------------- helpers
def create_mar(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CREATE_MAR), *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=120
    )


def repo_config() -> dict[str, str]:
    return sf.load_properties(REPO / "config.properties")


class Server:
    def __init__(self, root: Path, export_dir: Path) -> None:
        self.root = root
        self.export_dir = export_dir
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

    def key(self, which: str = "inference") -> str:
        return json.loads((self.run_dir / "key_file.json").read_text())[which]["key"]

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
        path = self.run_dir / "config.properties"
        path.write_text(sf.dump_properties(props), encoding="utf-8")
        return path

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

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"torchserve exited with {self.proc.returncode}\n{self.log_tail()}")
            if (self.run_dir / "key_file.json").exists():
                try:
                    ping = requests.get(f"{self.inference}/ping", headers=self.auth(), timeout=(2, 5))
                    if ping.status_code == 200 and self.worker_status() == ["READY"]:
                        return
                except (requests.RequestException, ValueError, KeyError):
                    pass
            time.sleep(0.5)
        pytest.fail(f"torchserve not ready after {READY_TIMEOUT}s\n{self.log_tail()}")

    def describe(self) -> dict:
        resp = requests.get(f"{self.management}/models/watermark", headers=self.auth("management"), timeout=TIMEOUT)
        resp.raise_for_status()
        return resp.json()[0]

    def worker_status(self) -> list[str]:
        return [w["status"] for w in self.describe()["workers"]]

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.describe()["workers"]]

    def batch_sizes(self) -> list[tuple[int, int]]:
        """(requests, rejected) of every batch the handler logged so far."""
        log = self.run_dir / "logs" / "model_log.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return [
            (int(m.group(1)), int(m.group(3)))
            for m in re.finditer(r"watermark batch: (\d+) requests, (\d+) decoded, (\d+) rejected", text)
        ]

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
            for sig, pause in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + pause
                while time.monotonic() < deadline:
                    try:
                        os.killpg(self.proc.pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.2)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if TORCHSERVE is None or (shutil.which("java") is None and not os.environ.get("JAVA_HOME")):
        pytest.skip("torchserve and Java are needed")
    root = tmp_path_factory.mktemp("torchserve")
    export_dir = sf.build_tiny_export(root / "export")
    srv = Server(root, export_dir)
    built = create_mar("--export-dir", str(export_dir), "--model-store", str(srv.store))
    assert built.returncode == 0, built.stderr
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
    leftover = subprocess.run(["pgrep", "-g", str(srv.proc.pid)], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"processes left behind: {leftover.stdout}"
    assert not (srv.run_dir / "key_file.json").exists()  # torchserve --stop removes it


def put_image(srv: Server, data: bytes, **kwargs) -> requests.Response:
    """Like `curl -T photo.jpg -H "Authorization: Bearer $KEY" URL` (raw PUT body)."""
    headers = kwargs.pop("headers", srv.auth())
    return requests.put(srv.predict_url, data=data, headers=headers, timeout=TIMEOUT, **kwargs)


def concurrent_puts(srv: Server, bodies: list[bytes]) -> list[requests.Response]:
    barrier = threading.Barrier(len(bodies))
    headers = srv.auth()

    def send(body: bytes) -> requests.Response:
        barrier.wait(timeout=10)
        return put_image(srv, body, headers=headers)

    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        return list(pool.map(send, bodies, timeout=60))


def assert_same_verdict(result: dict, reference: dict) -> None:
    assert set(result) == set(reference)
    assert result["probability"] == pytest.approx(reference["probability"], abs=PROB_TOL)
    if abs(reference["probability"] - reference["threshold"]) > PROB_TOL:
        assert result["watermark"] == reference["watermark"]
    for key in ("threshold", "model", "version"):
        assert result[key] == reference[key]


# ---------------------------------------------------------------- the server
@needs_server
def test_single_image_raw_body(server):
    data = sf.jpeg_bytes()
    resp = put_image(server, data)
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"watermark", "probability", "threshold", "model", "version"}
    assert body["probability"] == pytest.approx(sf.expected_probability(server.export_dir, data), abs=PROB_TOL)
    assert body["threshold"] == sf.THRESHOLD
    assert body["model"] == "watermark" and body["version"] == "1.0"
    assert isinstance(body["watermark"], bool)

    # POST with an image content type, and a multipart upload, give the same verdict
    post = requests.post(
        server.predict_url, data=data, headers={**server.auth(), "Content-Type": "image/jpeg"}, timeout=TIMEOUT
    )
    form = requests.post(server.predict_url, files={"data": ("p.jpg", data, "image/jpeg")}, headers=server.auth(),
                         timeout=TIMEOUT)
    # decode_input_request=false: a mislabelled text/plain body is still handed over as bytes
    text_label = requests.post(
        server.predict_url, data=data, headers={**server.auth(), "Content-Type": "text/plain"}, timeout=TIMEOUT
    )
    explain = requests.put(
        f"{server.inference}/explanations/watermark", data=data, headers=server.auth(), timeout=TIMEOUT
    )
    for other in (post, form, text_label, explain):
        assert other.status_code == 200, other.text
        assert_same_verdict(other.json(), body)

    as_json = requests.post(server.predict_url, json={"image": "x"}, headers=server.auth(), timeout=TIMEOUT)
    assert as_json.status_code == 400 and "not a decodable image" in as_json.json()["error"]


@needs_server
def test_requests_without_a_valid_token_are_refused(server):
    data = sf.jpeg_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": server.key("management")}):
        resp = put_image(server, data, headers=headers)
        # TorchServe 0.12 answers 400 (not 401) with an InvalidKeyException body.
        assert resp.status_code == 400, resp.text
        assert resp.json()["type"] == "InvalidKeyException"
    ping = requests.get(f"{server.inference}/ping", timeout=TIMEOUT)
    assert ping.status_code == 400  # even /ping needs the inference key
    manage = requests.get(f"{server.management}/models", headers=server.auth(), timeout=TIMEOUT)
    assert manage.status_code == 400  # the inference key is not the management key


@needs_server
def test_concurrent_requests_are_batched_and_match_single_results(server):
    images = [sf.jpeg_bytes(seed=s) for s in range(CONCURRENCY)]
    singles = []
    for data in images:
        resp = put_image(server, data)
        assert resp.status_code == 200, resp.text
        singles.append(resp.json())

    before = len(server.batch_sizes())
    for _round in range(3):  # batching depends on timing; a few rounds make it certain
        responses = concurrent_puts(server, images)
        for resp, single in zip(responses, singles):
            assert resp.status_code == 200, resp.text
            assert_same_verdict(resp.json(), single)
        if any(n > 1 for n, _ in server.batch_sizes()[before:]):
            break
    sizes = [n for n, _ in server.batch_sizes()[before:]]
    assert max(sizes) > 1, f"requests were never batched: {sizes}"
    assert max(sizes) <= 8  # batchSize from the archive's model-config.yaml


@needs_server
def test_bad_body_among_good_concurrent_ones(server):
    good = [sf.png_bytes(seed=20 + s) for s in range(CONCURRENCY - 1)]
    bad = sf.truncated_jpeg_bytes()
    bodies = good[:3] + [bad] + good[3:]
    pid_before = server.worker_pids()
    before = len(server.batch_sizes())
    for _round in range(3):
        responses = concurrent_puts(server, bodies)
        for i, resp in enumerate(responses):
            if i == 3:
                # the exact per-item error a client sees
                assert resp.status_code == 400
                assert resp.headers["content-type"] == "application/json"
                err = resp.json()
                assert set(err) == {"error", "status"} and err["status"] == 400
                assert err["error"].startswith("request body: not a decodable image")
                assert "allowed are JPEG, PNG, WebP, GIF, BMP and TIFF" in err["error"]
                assert resp.reason.startswith("request body: not a decodable image")  # status-line phrase
            else:
                assert resp.status_code == 200, resp.text
                assert resp.json()["probability"] == pytest.approx(
                    sf.expected_probability(server.export_dir, bodies[i]), abs=PROB_TOL
                )
        if any(n > 1 and rejected >= 1 for n, rejected in server.batch_sizes()[before:]):
            break
    assert any(n > 1 and rejected >= 1 for n, rejected in server.batch_sizes()[before:]), server.batch_sizes()

    # a decompression bomb header answers 413; the worker survived everything
    bomb = put_image(server, sf.bomb_png_bytes())
    assert bomb.status_code == 413 and bomb.json()["status"] == 413
    assert "at most" in bomb.json()["error"]
    assert server.worker_pids() == pid_before and server.worker_status() == ["READY"]
    assert requests.get(f"{server.inference}/ping", headers=server.auth(), timeout=TIMEOUT).json() == {
        "status": "Healthy"
    }
    assert put_image(server, sf.jpeg_bytes()).status_code == 200


@needs_server
def test_request_size_limit(server):
    """max_request_size=20 MiB: an 8 MB photo (over the 6.5 MB default) passes, 21 MB does not."""
    photo = sf.jpeg_bytes(400, 300)
    big = photo + b"\0" * (8 * 1024 * 1024)  # JPEG decoders ignore trailing bytes
    assert put_image(server, big).status_code == 200
    too_big = photo + b"\0" * (21 * 1024 * 1024)
    resp = put_image(server, too_big)
    assert resp.status_code == 413, resp.status_code
    assert put_image(server, photo).status_code == 200


@needs_server
def test_effective_model_config_and_metrics(server):
    described = server.describe()
    models = json.loads(repo_config()["models"])["watermark"]["1.0"]
    for key in ("batchSize", "maxBatchDelay", "responseTimeout", "minWorkers", "maxWorkers"):
        assert described[key] == models[key], key
    custom = requests.get(
        f"{server.management}/models/watermark?customized=true", headers=server.auth("management"), timeout=TIMEOUT
    ).json()[0]["customizedMetadata"]
    custom = json.loads(custom) if isinstance(custom, str) else custom  # 0.12 embeds it as JSON
    assert custom["threshold"] == sf.THRESHOLD and custom["version"] == "1.0"
    metrics = requests.get(f"{server.metrics}/metrics", timeout=TIMEOUT)
    assert metrics.status_code == 200 and "# TYPE" in metrics.text  # Prometheus text format


# ------------------------------------------------------------ scripts, config
def test_archive_config_matches_config_properties(tmp_path):
    export_dir = sf.build_tiny_export(tmp_path / "export")
    built = create_mar("--export-dir", str(export_dir), "--model-store", str(tmp_path / "store"))
    assert built.returncode == 0, built.stderr
    with zipfile.ZipFile(tmp_path / "store" / "watermark.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        model_config = yaml.safe_load(mar.read("model-config.yaml"))
    assert {"model.pt", "watermark_handler.py", "preprocess.py", "preprocess.json", "threshold.json",
            "model_info.json", "model-config.yaml"} <= names
    assert manifest["model"]["handler"] == "watermark_handler.py"
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["modelVersion"] == "1.0"

    props = repo_config()
    assert props["load_models"] == "watermark.mar"
    assert props["metrics_mode"] == "prometheus"
    assert int(props["max_request_size"]) > 6_553_500
    assert props.get("disable_token_authorization", "false") != "true"
    assert props.get("enable_model_api", "false") == "false"
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    models = json.loads(props["models"])["watermark"]["1.0"]
    for key in ("batchSize", "maxBatchDelay", "responseTimeout", "minWorkers", "maxWorkers"):
        assert model_config[key] == models[key], key
    assert models["batchSize"] == 8 and models["marName"] == "watermark.mar"
    assert isinstance(model_config["handler"], dict)


def test_create_mar_validates_inputs_and_never_leaves_partial_archives(tmp_path):
    store = tmp_path / "store"
    missing = create_mar("--export-dir", str(tmp_path / "nope"), "--model-store", str(store))
    assert missing.returncode != 0
    assert "nope" in missing.stderr and "make demo" in missing.stderr and "python -m train export" in missing.stderr

    export_dir = sf.build_tiny_export(tmp_path / "export")
    (export_dir / "threshold.json").rename(tmp_path / "threshold.json")
    no_threshold = create_mar("--export-dir", str(export_dir), "--model-store", str(store))
    assert no_threshold.returncode != 0 and "threshold.json" in no_threshold.stderr
    (tmp_path / "threshold.json").rename(export_dir / "threshold.json")

    bad_version = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--version", "1.0; rm -rf")
    assert bad_version.returncode != 0 and "invalid --version" in bad_version.stderr
    assert not (store / "watermark.mar").exists()

    ok = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--version", "2.1",
                    "--max-pixels", "1000000", "--model-name", "wm")
    assert ok.returncode == 0, ok.stderr
    archive = store / "wm.mar"
    first = archive.read_bytes()
    with zipfile.ZipFile(archive) as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2.1"
        assert yaml.safe_load(mar.read("model-config.yaml"))["handler"]["max_pixels"] == 1000000

    again = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--model-name", "wm")
    assert again.returncode != 0 and "--force" in again.stderr
    assert archive.read_bytes() == first

    forced = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--model-name", "wm", "--force")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in store.iterdir()) == ["wm.mar"]  # no temp folders left

    assert create_mar("--help").returncode == 0
    assert create_mar("--bogus").returncode != 0


def test_serve_sh_explains_missing_java(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}
    result = subprocess.run(["bash", str(SERVE_SH), "start"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Java" in result.stderr and ">= 11" in result.stderr
    assert subprocess.run(["bash", str(SERVE_SH), "--help"], capture_output=True, timeout=30).returncode == 0
