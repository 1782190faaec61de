"""The review app through Flask's test client (real SQLite and files; no TorchServe needed:
these cases are decided before TorchServe is asked, or are about TorchServe being absent).
The cases with a real TorchServe and a real browser are in tests/test_review_browser.py."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import pytest
from PIL import Image

from review.app import create_app
from review.config import MIB, ReviewConfig, config_from_args, get_args_parser
from review.heatmap import parse_explanation, render_png
from review.store import Check, sha256_hex
from tests.serving_fixtures import free_port, jpeg_bytes

SECRET = "inference-key-that-must-stay-on-the-server"


def write_keys(path: Path, key: str = SECRET) -> Path:
    path.write_text(json.dumps({"inference": {"key": key}, "management": {"key": "m"}, "API": {"key": "a"}}))
    return path


def config_for(tmp_path: Path, **overrides) -> ReviewConfig:
    values = dict(
        inference_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        key_file=write_keys(tmp_path / "key_file.json"), db=tmp_path / "review" / "decisions.sqlite",
        photos=tmp_path / "review" / "photos",
    )
    return ReviewConfig(**{**values, **overrides})


@pytest.fixture
def app(tmp_path: Path):
    return create_app(config_for(tmp_path))


def upload(client, files: list[tuple[bytes, str]]):
    return client.post(
        "/api/check", data={"files": [(io.BytesIO(data), name) for data, name in files]},
        content_type="multipart/form-data",
    )


EXPLANATION = {
    "kind": "class-activation", "rows": 2, "cols": 3, "grid": [[0.0, 0.2, 1.0], [0.1, 0.0, 0.4]],
    "image": {"width": 300, "height": 200}, "peak": {"x": 250, "y": 50},
    "box": {"left": 200, "top": 0, "right": 300, "bottom": 100},
}


def add_check(app, data: bytes, explanation: dict | None = EXPLANATION) -> str:
    sha = sha256_hex(data)
    app.extensions["review"].store.record_check(Check(
        sha256=sha, file_name="p.jpg", photo_file=f"{sha}.jpg", model="watermark", version="1.0",
        probability=0.9, threshold=0.37, verdict="watermark", explanation=explanation,
    ))
    return sha


# ---------------------------------------------------------------- the page
def test_page_and_assets_load_nothing_from_elsewhere(app):
    client = app.test_client()
    page = client.get("/")
    assert page.status_code == 200 and b'id="cards"' in page.data
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("/", "/static/review.js", "/static/review.css"):
        body = client.get(asset).get_data(as_text=True)
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", body, re.I), asset
    assert b"webkitdirectory" in page.data and b"multiple" in page.data
    config = client.get("/api/config").get_json()
    assert config["max_files"] == 50 and config["max_file_bytes"] == 20 * MIB


def test_command_line_defaults_and_key_file_from_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("REVIEW_KEY_FILE", raising=False)
    config = config_from_args(get_args_parser().parse_args([]))
    assert config.inference_url == "http://127.0.0.1:8080" and config.model == "watermark"
    assert config.key_file.name == "key_file.json" and config.db == Path("artifacts/review/decisions.sqlite")
    monkeypatch.setenv("REVIEW_KEY_FILE", str(tmp_path / "k.json"))
    assert config_from_args(get_args_parser().parse_args(["--max-file-mb", "2"])).key_file == tmp_path / "k.json"
    with pytest.raises(ValueError, match="max_request_bytes"):
        ReviewConfig(max_file_bytes=30 * MIB, max_request_bytes=20 * MIB)


# ---------------------------------------------------------------- bad uploads
def test_bad_files_get_their_own_message_before_torchserve_is_asked(tmp_path: Path):
    app = create_app(config_for(tmp_path, max_files=3, max_file_bytes=1 * MIB, max_request_bytes=8 * MIB))
    big = jpeg_bytes() + b"\0" * (1 * MIB + 10)
    resp = upload(app.test_client(), [(b"", "empty.jpg"), (big, "big.jpg"), (b"", "x.png"), (b"", "fourth.jpg")])
    assert resp.status_code == 200  # none of them needed TorchServe
    results = resp.get_json()["results"]
    assert [r["file"] for r in results] == ["empty.jpg", "big.jpg", "x.png", "fourth.jpg"]
    assert not any(r["ok"] for r in results)
    assert results[0]["error"].startswith("empty.jpg: empty file") and "allowed are JPEG" in results[0]["error"]
    assert results[1]["status"] == 413 and "big.jpg: too large (1.0 MiB)" in results[1]["error"]
    assert "at most 1 MiB per photo" in results[1]["error"]
    assert results[3]["error"] == "fourth.jpg: not checked: at most 3 files per upload"
    assert not (tmp_path / "review" / "photos").exists()


def test_a_request_over_the_limit_gets_a_json_error(tmp_path: Path):
    app = create_app(config_for(tmp_path, max_file_bytes=1 * MIB, max_request_bytes=1 * MIB))
    resp = upload(app.test_client(), [(b"\xff" * (2 * MIB), "huge.jpg")])
    assert resp.status_code == 413
    assert resp.get_json()["error"].startswith("upload too large: at most 1 MiB and 50 files per request")
    nothing = app.test_client().post("/api/check", data={}, content_type="multipart/form-data")
    assert nothing.status_code == 400 and "no files" in nothing.get_json()["error"]


def test_torchserve_down_is_503_server_unavailable_and_the_key_never_leaves(tmp_path: Path):
    config = config_for(tmp_path)
    client = create_app(config).test_client()
    resp = upload(client, [(jpeg_bytes(seed=1), "a.jpg"), (b"", "empty.jpg")])
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["error"] == f"server unavailable: cannot reach TorchServe at {config.inference_url}"
    assert body["results"][0]["unavailable"] and body["results"][1]["error"].startswith("empty.jpg: empty file")
    health = client.get("/api/health")
    assert health.status_code == 503 and health.get_json()["error"].startswith("server unavailable")
    pages = [resp, health] + [client.get(p) for p in ("/", "/static/review.js", "/api/config")]
    assert all(SECRET not in r.get_data(as_text=True) for r in pages)

    config.key_file.unlink()  # torchserve --stop removes its key file; a fresh app has no key yet
    resp = upload(create_app(config).test_client(), [(jpeg_bytes(seed=1), "a.jpg")])
    assert resp.status_code == 503 and str(config.key_file) in resp.get_json()["error"]


# ---------------------------------------------------------------- heat-map
def test_heatmap_png_follows_the_grid_and_the_displayed_size(app):
    client = app.test_client()
    sha = add_check(app, jpeg_bytes(seed=5))
    resp = client.get(f"/api/heatmap/{sha}.png?w=240")
    assert resp.status_code == 200 and resp.mimetype == "image/png"
    img = Image.open(io.BytesIO(resp.data))
    assert img.mode == "RGBA" and img.size == (240, 160)  # the photo's 3:2
    alpha = img.getchannel("A")
    hot, cold = alpha.getpixel((215, 45)), alpha.getpixel((5, 150))  # cells (0, 2) = 1.0 and (1, 0) = 0.1
    assert hot > 120 and cold < 40 and hot > cold
    red, _green, blue, _ = img.getpixel((215, 45))
    assert red > blue  # evidence is warm, absence cool
    assert Image.open(io.BytesIO(client.get(f"/api/heatmap/{sha}.png").data)).size == (300, 200)
    assert Image.open(io.BytesIO(client.get(f"/api/heatmap/{sha}.png?w=99999").data)).size[0] == 2048

    plain = add_check(app, jpeg_bytes(seed=6), explanation=None)
    assert client.get(f"/api/heatmap/{plain}.png").status_code == 404
    assert client.get("/api/heatmap/../../etc.png").status_code == 404
    assert client.get(f"/api/heatmap/{'f' * 64}.png").get_json()["error"].endswith("no heat-map")


def test_explanations_are_checked_at_the_edge():
    clean = parse_explanation({**EXPLANATION, "grid": [[-1.0, 0.5, 2.0], [0.0, 0.0, 0.0]]})
    assert clean["grid"][0] == [0.0, 0.5, 1.0] and clean["box"]["left"] == 200
    for bad, why in (
        (None, "not an object"),
        ({**EXPLANATION, "rows": 3}, "grid is not 3 rows"),
        ({**EXPLANATION, "cols": 0}, "rows and cols"),
        ({**EXPLANATION, "grid": [[0, 0, "x"], [0, 0, 0]]}, "not a finite number"),
        ({**EXPLANATION, "grid": [[0, 0, float("nan")], [0, 0, 0]]}, "not a finite number"),
        ({**EXPLANATION, "image": {"width": 0, "height": 5}}, "positive"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_explanation(bad)
    assert render_png(parse_explanation({**EXPLANATION, "box": "nonsense"}), 64).startswith(b"\x89PNG")


# ---------------------------------------------------------------- decisions
def test_decisions_api(app):
    client = app.test_client()
    sha = add_check(app, jpeg_bytes(seed=7))
    resp = client.post("/api/decisions", json={"sha256": sha, "decision": "accept", "reviewer": "Sara"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["saved"] is True and body["overturned"] is True and body["verdict"] == "watermark"
    for payload, status, why in (
        ({"sha256": sha, "decision": "accept"}, 400, "type your name first"),
        ({"sha256": sha, "decision": "later", "reviewer": "Sara"}, 400, "allowed are accept"),
        ({"sha256": "abc", "decision": "accept", "reviewer": "Sara"}, 400, "64 lowercase"),
        ({"sha256": "0" * 64, "decision": "accept", "reviewer": "Sara"}, 404, "not checked"),
    ):
        bad = client.post("/api/decisions", json=payload)
        assert bad.status_code == status and why in bad.get_json()["error"]
    assert client.post("/api/decisions", data="nope").status_code == 400
    assert len(app.extensions["review"].store.decisions()) == 1


def test_a_double_click_stores_one_decision(app):
    sha = add_check(app, jpeg_bytes(seed=8))
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def click() -> None:
        client = app.test_client()
        barrier.wait(timeout=10)
        statuses.append(client.post("/api/decisions", json={"sha256": sha, "decision": "reject", "reviewer": "Sara"}).status_code)

    threads = [threading.Thread(target=click) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert statuses == [200, 200]
    rows = app.extensions["review"].store.decisions()
    assert len(rows) == 1 and rows[0].decision == "reject" and not rows[0].overturned
