"""A real TorchServe 0.12 on free loopback ports, serving a .mar built by scripts/create_mar.sh.

The server runs from a temporary directory (so key_file.json and logs/ land there) with a
private TMPDIR/TEMP (TorchServe's pid file lives in $TMPDIR/.model_server.pid and is
shared by every torchserve of the user otherwise). Token authorisation stays on.
Every request has a timeout; the fixture always stops the server and its process group.
(The server helper lives in tests/ts_server.py, shared with the other serving tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import zipfile

import pytest
import requests
import yaml

from tests import serving_fixtures as sf
from tests.ts_server import (  # noqa: F401  (re-exported for other test modules)
    HAVE_SERVER,
    REPO,
    TIMEOUT,
    Server,
    concurrent_puts,
    create_mar,
    needs_server,
    put_image,
    repo_config,
    serve,
    serve_tiny_export,
)

pytestmark = pytest.mark.integration

SERVE_SH = REPO / "scripts" / "serve.sh"
CONCURRENCY = 8
PROB_TOL = 2e-6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve_tiny_export(tmp_path_factory.mktemp("torchserve"))


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
    for other in (post, form, text_label):
        assert other.status_code == 200, other.text
        assert_same_verdict(other.json(), body)
    # /explanations: the same verdict plus where the evidence is (TorchServe's explain header)
    assert explain.status_code == 200, explain.text
    explained = explain.json()
    assert_same_verdict({k: v for k, v in explained.items() if k != "explanation"}, body)
    assert explained["explanation"]["image"] == {"width": 120, "height": 90}
    assert len(explained["explanation"]["grid"]) == explained["explanation"]["rows"]

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
    assert {"model.pt", "watermark_handler.py", "preprocess.py", "evidence.py", "preprocess.json", "threshold.json",
            "model_info.json", "model-config.yaml"} <= names
    assert manifest["model"]["handler"] == "watermark_handler.py"
    assert manifest["model"]["serializedFile"] == "model.pt"
    assert manifest["model"]["modelVersion"] == "1.0"

    props = repo_config()
    assert props["load_models"] == "watermark.mar"
    assert props["metrics_mode"] == "prometheus"
    assert int(props["max_request_size"]) > 6_553_500
    assert props.get("disable_token_authorization", "false") != "true"
    # the management API is on only together with allowed_urls refusing every URL (ShellTorch)
    if props.get("enable_model_api", "false").lower() == "true":
        assert props["allowed_urls"] == "^$"
    assert props["metrics_config"] == "metrics.yaml" and (REPO / "metrics.yaml").is_file()
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

    bad_memory = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--decode-memory-mb", "lots")
    assert bad_memory.returncode != 0 and "invalid --decode-memory-mb 'lots'" in bad_memory.stderr
    ok = create_mar("--export-dir", str(export_dir), "--model-store", str(store), "--version", "2.1",
                    "--max-pixels", "1000000", "--decode-memory-mb", "12", "--model-name", "wm")
    assert ok.returncode == 0, ok.stderr
    archive = store / "wm.mar"
    first = archive.read_bytes()
    with zipfile.ZipFile(archive) as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"] == "2.1"
        handler_settings = yaml.safe_load(mar.read("model-config.yaml"))["handler"]
        assert handler_settings["max_pixels"] == 1000000 and handler_settings["decode_memory_mb"] == 12

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


def test_create_mar_names_archives_per_version(tmp_path):
    export_dir = sf.build_tiny_export(tmp_path / "export")
    store = tmp_path / "store"
    common = ("--export-dir", str(export_dir), "--model-store", str(store))
    versioned = create_mar(*common, "--version", "1.1", "--versioned")
    assert versioned.returncode == 0, versioned.stderr
    assert "scripts/manage_models.py register watermark-v1.1.mar" in versioned.stdout
    named = create_mar(*common, "--version", "2.0", "--archive-name", "watermark-canary.mar")
    assert named.returncode == 0, named.stderr
    default = create_mar(*common)  # unchanged default: watermark.mar, version 1.0
    assert default.returncode == 0, default.stderr
    assert sorted(p.name for p in store.iterdir()) == ["watermark-canary.mar", "watermark-v1.1.mar", "watermark.mar"]
    for name, version in (("watermark-v1.1.mar", "1.1"), ("watermark-canary.mar", "2.0"), ("watermark.mar", "1.0")):
        with zipfile.ZipFile(store / name) as mar:
            model = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]
        assert (model["modelName"], model["modelVersion"]) == ("watermark", version)  # same model, new version

    again = create_mar(*common, "--version", "1.1", "--versioned")
    assert again.returncode != 0 and "watermark-v1.1.mar' already exists" in again.stderr
    both = create_mar(*common, "--versioned", "--archive-name", "x")
    assert both.returncode != 0 and "pass only one" in both.stderr
    for bad in ("../escape", "a/b", "-x", ""):
        result = create_mar(*common, "--archive-name", bad)
        assert result.returncode != 0, bad
        assert "--archive-name" in result.stderr, (bad, result.stderr)
