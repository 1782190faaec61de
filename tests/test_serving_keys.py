"""Keys that live as long as the server, keyless probes, and serve.sh without keys in argv.

A real TorchServe whose keys expire after 18 s (token_expiration_min=0.3) and the real
scripts/keykeeper.py beside it: the keys are renewed before they expire, requests with the
current key keep working long past the first expiry, the probes answer without a key and
never show one. Then scripts/serve.sh runs a server of its own in a temporary directory
(start, status, header, rotate, stop) with a curl shim on PATH that records every argument
list: no key may appear in one. Every request goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from scripts import keykeeper
from tests import serving_fixtures as sf
from tests.ts_server import PYTHON, REPO, TIMEOUT, create_mar, needs_server, put_image, repo_config, serve

EXPIRY_MIN = 0.3  # 18 s
KEEPER = REPO / "scripts" / "keykeeper.py"
SERVE_SH = REPO / "scripts" / "serve.sh"


# ------------------------------------------------------------------ unit: the keeper


def test_short_lived_keys_are_renewed_at_half_their_life(tmp_path):
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    keys = {
        "inference": {"key": "a", "expiration time": (now + timedelta(seconds=20)).isoformat().replace("+00:00", "Z")},
        "management": {"key": "b", "expiration time": (now + timedelta(hours=24)).isoformat().replace("+00:00", "Z")},
        "API": {"key": "c"},
    }
    keeper = keykeeper.Keeper(tmp_path / "k.json", "http://127.0.0.1:1", "http://127.0.0.1:1", "watermark", 600)
    assert 9 <= keeper.due_in(keys, "inference") <= 10.5  # margin 600 s > life: renewed at half of it
    assert 24 * 3600 - 601 <= keeper.due_in(keys, "management") <= 24 * 3600 - 599
    assert keeper.due_in({"API": {"key": "c"}}, "API") is None  # never expires


def test_key_file_read_mid_write_is_retried(tmp_path):
    path = tmp_path / "key_file.json"
    path.write_text('{"inference": {"key": "x"', encoding="utf-8")  # TorchServe rewrites it in place
    with pytest.raises(keykeeper.KeyFileError, match="expected TorchServe's keys"):
        keykeeper.read_keys(path, attempts=2)
    with pytest.raises(keykeeper.KeyFileError, match="not found"):
        keykeeper.read_keys(tmp_path / "missing.json")
    full = {"inference": {"key": "i"}, "management": {"key": "m"}, "API": {"key": "a"}}
    path.write_text(json.dumps(full), encoding="utf-8")
    assert keykeeper.read_keys(path) == full


def test_probes_say_not_ready_when_torchserve_is_down(tmp_path):
    (tmp_path / "key_file.json").write_text(
        json.dumps({"inference": {"key": "i"}, "management": {"key": "m"}, "API": {"key": "a"}}), encoding="utf-8"
    )
    dead = f"http://127.0.0.1:{sf.free_port()}"
    keeper = keykeeper.Keeper(tmp_path / "key_file.json", dead, dead, "watermark", 600, timeout_s=2)
    assert keeper.live() == (False, "frontend not answering (URLError)")
    assert keeper.ready()[0] is False


def test_without_auth_there_is_nothing_to_renew_and_probes_send_no_key(tmp_path):
    dead = f"http://127.0.0.1:{sf.free_port()}"
    keeper = keykeeper.Keeper(None, dead, dead, "watermark", 600, timeout_s=2)
    assert keeper.tick() == 10.0  # no key file is read or needed
    assert keeper.live() == (False, "frontend not answering (URLError)")


# ----------------------------------------------------------- integration: real server

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ts-keys")
    export_dir = sf.build_tiny_export(root / "export")

    def setup(srv):
        built = create_mar("--export-dir", str(export_dir), "--model-store", str(srv.store))
        assert built.returncode == 0, built.stderr

    yield from serve(root, setup, overrides={"token_expiration_min": str(EXPIRY_MIN)})


@pytest.fixture(scope="module")
def keeper(server):
    port = sf.free_port()
    proc = subprocess.Popen(
        [PYTHON, str(KEEPER), "--config", str(server.config_file), "--key-file", str(server.key_file),
         "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            requests.get(f"{url}/live", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.url = url  # type: ignore[attr-defined]
    yield proc
    if proc.poll() is None:
        proc.terminate()
    proc.wait(timeout=20)


@pytest.mark.integration
@needs_server
def test_keyless_probes_answer_without_showing_a_key(server, keeper):
    keys = json.loads(server.key_file.read_text())
    for path, detail in (("/live", "/ping answered 200"), ("/ready", "1 of 1 workers READY")):
        resp = requests.get(keeper.url + path, timeout=TIMEOUT)  # no Authorization header
        assert resp.status_code == 200 and resp.json() == {"ok": True, "detail": detail}
        assert not any(entry["key"] in resp.text for entry in keys.values())
    assert requests.get(keeper.url + "/anything", timeout=TIMEOUT).status_code == 404


@pytest.mark.integration
@needs_server
def test_keys_are_renewed_before_they_expire(server, keeper):
    """Past twice the keys' lifetime, the current keys still work; the first ones do not."""
    first = json.loads(server.key_file.read_text())
    started = time.monotonic()
    seen = {"inference": {first["inference"]["key"]}, "management": {first["management"]["key"]}}
    while time.monotonic() - started < 2.2 * EXPIRY_MIN * 60:
        resp = put_image(server, sf.jpeg_bytes())  # reads key_file.json afresh each time, as clients do
        if resp.status_code == 400 and "InvalidKey" in resp.text:  # landed between a renewal and our read
            resp = put_image(server, sf.jpeg_bytes())
        assert resp.status_code == 200, resp.text
        assert server.describe()["workers"][0]["status"] == "READY"  # the management key works too
        for which in seen:
            seen[which].add(server.key(which))
        time.sleep(1)
    assert len(seen["inference"]) >= 3 and len(seen["management"]) >= 3, seen  # renewed again and again
    old = requests.get(f"{server.inference}/ping", headers={"Authorization": f"Bearer {first['inference']['key']}"},
                       timeout=TIMEOUT)
    assert old.status_code == 400 and old.json()["type"] == "InvalidKeyException"
    assert requests.get(keeper.url + "/ready", timeout=TIMEOUT).status_code == 200
    assert keeper.poll() is None


@pytest.mark.integration
@needs_server
def test_models_script_reads_a_renewed_key_again(server, keeper):
    from scripts.manage_models import Management

    api = Management(server.management, "renewed-meanwhile", 10.0, key_file=server.key_file)
    assert [m["modelName"] for m in api.call("GET", "/models")["models"]] == ["watermark"]
    assert api.key == server.key("management")


@pytest.mark.integration
@needs_server
def test_sigusr1_turns_ready_off_and_leaves_live_on(server, keeper):
    """The container's entry point sends SIGUSR1 on SIGTERM: no new traffic, the server still answers."""
    os.kill(keeper.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while (ready := requests.get(keeper.url + "/ready", timeout=TIMEOUT)).status_code != 503:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.1)
    assert ready.json() == {"ok": False, "detail": "draining: the server is shutting down"}
    assert requests.get(keeper.url + "/live", timeout=TIMEOUT).status_code == 200
    assert put_image(server, sf.jpeg_bytes()).status_code == 200  # requests in flight or late are still answered
    assert keeper.poll() is None


# ------------------------------------------------------------- serve.sh, end to end


@pytest.mark.integration
@needs_server
def test_serve_sh_keeps_keys_out_of_process_arguments(tmp_path):
    """start / status / header / rotate / stop in a temporary SERVE_DIR, every curl recorded."""
    export_dir = sf.build_tiny_export(tmp_path / "export")
    store = tmp_path / "store"
    built = create_mar("--export-dir", str(export_dir), "--model-store", str(store))
    assert built.returncode == 0, built.stderr
    ports = {name: sf.free_port() for name in ("inference", "management", "metrics", "grpc_i", "grpc_m", "health")}
    props = repo_config()
    props.update(
        inference_address=f"http://127.0.0.1:{ports['inference']}",
        management_address=f"http://127.0.0.1:{ports['management']}",
        metrics_address=f"http://127.0.0.1:{ports['metrics']}",
        grpc_inference_port=str(ports["grpc_i"]), grpc_management_port=str(ports["grpc_m"]),
        model_store=str(store), metrics_config=str(REPO / "metrics.yaml"),
    )
    run_dir = tmp_path / "run"
    config = tmp_path / "config.properties"
    config.write_text(sf.dump_properties(props), encoding="utf-8")
    shim_dir, argv_log = tmp_path / "bin", tmp_path / "curl-argv.log"
    shim_dir.mkdir()
    real_curl = subprocess.run(["bash", "-c", "command -v curl"], capture_output=True, text=True).stdout.strip()
    (shim_dir / "curl").write_text(f'#!/bin/bash\nprintf "%s\\n" "$*" >> {argv_log}\nexec {real_curl} "$@"\n')
    (shim_dir / "curl").chmod(0o755)
    env = {**os.environ, "SERVE_CONFIG": str(config), "SERVE_DIR": str(run_dir), "TMPDIR": str(tmp_path),
           "SERVE_HEALTH": f"127.0.0.1:{ports['health']}", "PATH": f"{shim_dir}:{os.environ['PATH']}"}

    def sh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SERVE_SH), *args], env=env, capture_output=True, text=True, timeout=240)

    keys_seen: set[str] = set()
    try:
        started = sh("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"and http://127.0.0.1:{ports['health']}/ready" in started.stdout
        keys = json.loads((run_dir / "key_file.json").read_text())
        keys_seen |= {entry["key"] for entry in keys.values()}
        assert not any(key in started.stdout for key in keys_seen)  # start no longer prints the key

        status = sh("status")
        assert status.returncode == 0 and "ready: " in status.stdout, status.stdout + status.stderr
        header = sh("header")
        assert header.stdout == f"Authorization: Bearer {keys['inference']['key']}\n"

        rotated = sh("rotate")
        assert rotated.returncode == 0 and rotated.stdout.count("New ") == 2, rotated.stdout + rotated.stderr
        after = json.loads((run_dir / "key_file.json").read_text())
        assert after["inference"]["key"] != keys["inference"]["key"]
        assert after["management"]["key"] != keys["management"]["key"]
        keys_seen |= {entry["key"] for entry in after.values()}
        only = sh("rotate", "inference")
        latest = json.loads((run_dir / "key_file.json").read_text())
        assert only.returncode == 0 and latest["management"]["key"] == after["management"]["key"]
        keys_seen |= {entry["key"] for entry in latest.values()}
        bad = sh("rotate", "everything")
        assert bad.returncode != 0 and "rotate: use inference, management or all" in bad.stderr

        url = f"http://127.0.0.1:{ports['inference']}/predictions/watermark"
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(sf.jpeg_bytes())
        piped = subprocess.run(f"bash {SERVE_SH} header | curl -s -H @- -T {photo} {url}", shell=True, env=env,
                               capture_output=True, text=True, timeout=60)
        assert json.loads(piped.stdout)["model"] == "watermark"  # the README's way to call it
    finally:
        stopped = sh("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not (run_dir / "key_file.json").exists()
    pid_file = run_dir / "logs" / "keykeeper.pid"
    assert not pid_file.exists()
    keeper_left = subprocess.run(["pgrep", "-f", f"keykeeper.py.*{run_dir}"], capture_output=True, text=True)
    assert keeper_left.stdout == "", keeper_left.stdout
    recorded = argv_log.read_text()
    assert recorded.count("\n") >= 5  # the shim saw serve.sh's calls
    leaked = [key for key in keys_seen if key in recorded]
    assert not leaked, "keys in curl's argument list"
