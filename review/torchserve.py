"""The review app's client of TorchServe's inference API (HTTP only; the key stays here).

One photo per request, so a bad photo gets its own answer. The inference key is read
from TorchServe's ``key_file.json``; keys rotate (``scripts/keykeeper.py``), so a refused
key (TorchServe 0.12 answers 400 ``InvalidKeyException``) makes the client read the file
again and retry once. Proxies from the environment are ignored: TorchServe is on loopback.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


class Unavailable(RuntimeError):
    """TorchServe cannot answer (not running, not reachable, key refused, model not served)."""


@dataclass(frozen=True)
class Answer:
    """TorchServe's answer for one photo: the HTTP status and the JSON body."""

    status: int
    body: dict[str, Any]


def _key_refused(resp: requests.Response) -> bool:
    if resp.status_code not in (400, 401, 403):
        return False
    text = resp.text[:2000]
    return "InvalidKeyException" in text or "Token" in text


class TorchServeClient:
    """Sends photos to ``POST {url}/explanations/{model}`` (or ``/predictions``) with the key."""

    def __init__(self, url: str, model: str, key_file: str | Path, *, timeout: tuple[float, float] = (3.0, 60.0)) -> None:
        self.url = url.rstrip("/")
        self.model = model
        self.key_file = Path(key_file)
        self.timeout = timeout
        self._key: str | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # loopback: never through http_proxy
            self._local.session = session
        return session

    def _read_key(self) -> str:
        try:
            keys = json.loads(self.key_file.read_text(encoding="utf-8"))
            return str(keys["inference"]["key"])
        except FileNotFoundError:
            raise Unavailable(
                f"server unavailable: no key file {self.key_file} (is TorchServe running? make serve)"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise Unavailable(f"server unavailable: {self.key_file} holds no inference key") from None

    def _current_key(self, refresh: bool = False) -> str:
        with self._lock:
            if refresh or self._key is None:
                self._key = self._read_key()
            return self._key

    def _send(self, method: str, path: str, data: bytes | None) -> requests.Response:
        url = f"{self.url}{path}"
        for attempt in range(2):
            key = self._current_key(refresh=attempt > 0)
            try:
                resp = self._session().request(
                    method, url, data=data, headers={"Authorization": f"Bearer {key}"}, timeout=self.timeout
                )
            except (requests.ConnectionError, requests.Timeout) as exc:
                kind = "timed out" if isinstance(exc, requests.Timeout) else "cannot reach"
                raise Unavailable(f"server unavailable: {kind} TorchServe at {self.url}") from None
            if not _key_refused(resp):
                return resp
        raise Unavailable(f"server unavailable: TorchServe at {self.url} refused the inference key in {self.key_file}")

    def ping(self) -> None:
        """Raise :class:`Unavailable` unless ``/ping`` answers 200."""
        resp = self._send("GET", "/ping", None)
        if resp.status_code != 200:
            raise Unavailable(f"server unavailable: TorchServe at {self.url} answered /ping with HTTP {resp.status_code}")

    def check(self, data: bytes, *, explain: bool = True) -> Answer:
        """The model's answer for one photo; 4xx answers are returned, not raised.

        Raises:
            Unavailable: TorchServe is down, refuses the key, does not serve the model or
                has no worker ready (HTTP 404 / 503 / 507).
        """
        route = "explanations" if explain else "predictions"
        resp = self._send("POST", f"/{route}/{self.model}", data)
        if resp.status_code in (404, 503, 507):
            detail = _message(resp)
            raise Unavailable(
                f"server unavailable: TorchServe at {self.url} answered HTTP {resp.status_code} for model "
                f"{self.model}: {detail}"
            )
        try:
            body = resp.json()
        except ValueError:
            body = {"error": f"TorchServe answered HTTP {resp.status_code} without JSON", "status": resp.status_code}
        if isinstance(body, list) and len(body) == 1:
            body = body[0]
        if not isinstance(body, dict):
            body = {"error": f"TorchServe answered HTTP {resp.status_code} with unexpected JSON", "status": 502}
        return Answer(status=resp.status_code, body=body)


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict):
            return str(body.get("message") or body.get("error") or body)[:300]
    except ValueError:
        pass
    return resp.text[:300] or resp.reason or ""
