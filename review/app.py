"""The review app: one page, a small JSON API, and the path from verdicts back to training.

Routes (all JSON but the page, its static files and the heat-map PNG):

* ``GET /``: the page (``static/index.html``, ``review.js``, ``review.css``; nothing loaded
  from anywhere else, enforced by a Content-Security-Policy of ``'self'``).
* ``GET /api/config``: the limits and the model name the page shows.
* ``GET /api/health``: 200 when TorchServe answers ``/ping``, else 503 with the reason.
* ``POST /api/check``: multipart, one or more ``files`` fields; each photo is sent to
  TorchServe as its own request (a few at once) and gets its own result or error. Good
  photos are stored content-addressed and their check recorded. 503 (with the results)
  when TorchServe could not be reached for any photo.
* ``GET /api/heatmap/<sha256>.png?w=WIDTH``: the verdict's evidence as a semi-transparent
  overlay, WIDTH pixels wide.
* ``POST /api/decisions``: ``{"sha256", "decision": "accept"|"reject", "reviewer"}``;
  answers ``{"saved": true, ...}`` only after the row is committed.

The TorchServe key is read and sent by :class:`review.torchserve.TorchServeClient` only;
no answer of this app contains it.
"""

from __future__ import annotations

import io
import re
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

from flask import Flask, Response, jsonify, request, send_from_directory
from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from review.config import MIB, ReviewConfig
from review.heatmap import parse_explanation, render_png
from review.store import Check, ReviewStore, save_photo, sha256_hex
from review.torchserve import TorchServeClient, Unavailable

ALLOWED = "allowed are JPEG, PNG, WebP, GIF, BMP and TIFF images"
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tif", "MPO": "jpg"}
SHA_RE = re.compile(r"^[0-9a-f]{64}$")
CSP = (
    "default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _mib(n: int) -> str:
    return f"{n / MIB:.1f} MiB" if n % MIB else f"{n // MIB} MiB"


def display_name(upload: FileStorage, index: int) -> str:
    """The file's name as the browser sent it (a folder upload keeps its relative path),
    without control characters and at most 200 characters."""
    name = "".join(ch for ch in (upload.filename or "") if ch.isprintable()).strip()
    return (name or f"file {index + 1}")[-200:]


def photo_extension(data: bytes) -> str:
    """The stored file's extension, from the image's own header (TorchServe has accepted it)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return EXTENSIONS.get(img.format or "", "img")
    except (UnidentifiedImageError, OSError, ValueError):
        return "img"


def _error(name: str, status: int, message: str, **extra: Any) -> dict[str, Any]:
    return {"file": name, "ok": False, "status": status, "error": f"{name}: {message}", **extra}


def _verdict_fields(body: dict[str, Any]) -> dict[str, Any]:
    """watermark, probability, threshold, model, version of a 200 answer; ValueError if malformed."""
    try:
        fields = {
            "watermark": body["watermark"], "probability": float(body["probability"]),
            "threshold": float(body["threshold"]), "model": str(body["model"]), "version": str(body["version"]),
        }
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"TorchServe's answer is not a verdict: {str(body)[:200]}") from None
    if not isinstance(fields["watermark"], bool):
        raise ValueError("TorchServe's answer has no true/false watermark")
    return fields


def _explanation_of(body: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(explanation, None) when the answer carries a usable one, else (None, why not)."""
    if "explanation" not in body:
        return None, "no heat-map: the served model gives no explanation"
    if body["explanation"] is None:
        return None, f"no heat-map: {body.get('explanation_error') or 'the model gave none for this photo'}"
    try:
        return parse_explanation(body["explanation"]), None
    except ValueError as exc:
        return None, f"no heat-map: {exc}"


class Reviewer:
    """What the routes share: the settings, the TorchServe client and the store."""

    def __init__(self, config: ReviewConfig) -> None:
        self.config = config
        self.client = TorchServeClient(
            config.inference_url, config.model, config.key_file,
            timeout=(config.connect_timeout, config.read_timeout),
        )
        self.store = ReviewStore(config.db)

    def check_one(self, name: str, data: bytes) -> dict[str, Any]:
        """The result for one uploaded file (never raises for a bad file or a down server)."""
        c = self.config
        if not data:
            return _error(name, 400, f"empty file; {ALLOWED}")
        if len(data) > c.max_file_bytes:
            return _error(name, 413, f"too large ({_mib(len(data))}); at most {_mib(c.max_file_bytes)} per photo")
        try:
            answer = self.client.check(data)
        except Unavailable as exc:
            return _error(name, 503, str(exc), unavailable=True)
        if answer.status != 200:
            message = str(answer.body.get("error") or f"TorchServe answered HTTP {answer.status}")
            message = message.removeprefix("request body: ")
            status = answer.status if 400 <= answer.status < 500 else 502
            return _error(name, status, message if "allowed" in message else f"{message}; {ALLOWED}")
        try:
            verdict = _verdict_fields(answer.body)
        except ValueError as exc:
            return _error(name, 502, str(exc))
        explanation, note = _explanation_of(answer.body)
        sha = sha256_hex(data)
        try:  # the photo first: a recorded check always has its photo on disk
            photo_file = save_photo(c.photos, sha, photo_extension(data), data)
            self.store.record_check(Check(
                sha256=sha, file_name=name, photo_file=photo_file, model=verdict["model"], version=verdict["version"],
                probability=verdict["probability"], threshold=verdict["threshold"],
                verdict="watermark" if verdict["watermark"] else "clean", explanation=explanation,
            ))
        except (OSError, sqlite3.Error) as exc:
            return _error(name, 500, f"checked, but not stored, so it cannot be decided on: {exc}")
        return {
            "file": name, "ok": True, "sha256": sha, **verdict,
            "verdict": "watermark" if verdict["watermark"] else "clean",
            "heatmap": f"/api/heatmap/{sha}.png" if explanation else None, "heatmap_note": note,
            "image": explanation["image"] if explanation else None,
        }

    def check_uploads(self, uploads: list[FileStorage]) -> list[dict[str, Any]]:
        """Results in upload order; files past ``max_files`` get their own error, unsent."""
        limit = self.config.max_files
        names = [display_name(u, i) for i, u in enumerate(uploads)]
        batch = [(name, upload.read()) for name, upload in zip(names[:limit], uploads[:limit])]
        with ThreadPoolExecutor(max_workers=max(1, min(self.config.workers, len(batch)))) as pool:
            results = list(pool.map(lambda item: self.check_one(*item), batch))
        for name in names[limit:]:
            results.append(_error(name, 413, f"not checked: at most {limit} files per upload"))
        return results


def _json_error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message, "status": status}), status


def _register_routes(app: Flask, reviewer: Reviewer) -> None:
    config = reviewer.config

    @app.get("/")
    def index() -> Response:
        return send_from_directory(app.static_folder, "index.html")

    @app.get("/api/config")
    def api_config() -> Response:
        return jsonify({
            "model": config.model, "max_files": config.max_files, "max_file_bytes": config.max_file_bytes,
            "max_request_bytes": config.max_request_bytes, "allowed": ALLOWED,
        })

    @app.get("/api/health")
    def api_health() -> tuple[Response, int]:
        try:
            reviewer.client.ping()
        except Unavailable as exc:
            return _json_error(503, str(exc))
        return jsonify({"torchserve": "up"}), 200

    @app.post("/api/check")
    def api_check() -> tuple[Response, int]:
        uploads = request.files.getlist("files")
        if not uploads:
            return _json_error(400, f"no files: send one or more multipart fields named 'files' ({ALLOWED})")
        results = reviewer.check_uploads(uploads)
        unavailable = next((r["error"].split(": ", 1)[1] for r in results if r.get("unavailable")), None)
        if unavailable:
            return jsonify({"error": unavailable, "status": 503, "results": results}), 503
        return jsonify({"results": results}), 200

    @app.get("/api/heatmap/<sha>.png")
    def api_heatmap(sha: str) -> Response | tuple[Response, int]:
        if not SHA_RE.match(sha):
            return _json_error(404, "no such photo")
        check = reviewer.store.get_check(sha)
        if check is None or check.explanation is None:
            return _json_error(404, f"photo {sha}: no heat-map")
        width = request.args.get("w", type=int)
        resp = Response(render_png(check.explanation, width), mimetype="image/png")
        resp.headers["Cache-Control"] = "no-cache"  # a new check of the photo may change it
        return resp

    @app.post("/api/decisions")
    def api_decide() -> tuple[Response, int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return _json_error(400, 'send JSON {"sha256", "decision": "accept" or "reject", "reviewer"}')
        sha = str(body.get("sha256", ""))
        if not SHA_RE.match(sha):
            return _json_error(400, "sha256: 64 lowercase hexadecimal characters")
        try:
            decision = reviewer.store.decide(sha, str(body.get("decision", "")), body.get("reviewer"))
        except ValueError as exc:
            return _json_error(400, str(exc))
        except LookupError as exc:
            return _json_error(404, str(exc))
        except sqlite3.Error as exc:
            return _json_error(500, f"not saved: the decisions database failed ({exc})")
        return jsonify({"saved": True, **asdict(decision)}), 200


def _register_errors(app: Flask, config: ReviewConfig) -> None:
    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge) -> tuple[Response, int]:
        return _json_error(
            413, f"upload too large: at most {_mib(config.max_request_bytes)} and {config.max_files} files per "
            f"request, {_mib(config.max_file_bytes)} per photo; send fewer or smaller files",
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        return _json_error(exc.code or 500, exc.description or exc.name)

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers["Content-Security-Policy"] = CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers.setdefault("Cache-Control", "no-store")
        return resp


def create_app(config: ReviewConfig | None = None) -> Flask:
    """The review app for ``config`` (the database is created on first use, here)."""
    config = config or ReviewConfig()
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_request_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = 1 * MIB
    app.config["MAX_FORM_PARTS"] = config.max_files * 2 + 20
    app.json.sort_keys = False
    reviewer = Reviewer(config)
    app.extensions["review"] = reviewer
    _register_routes(app, reviewer)
    _register_errors(app, config)
    return app
