#!/usr/bin/env python3
"""Keep TorchServe's keys alive and answer health probes that need no key.

TorchServe 0.12 guards every route of the inference and management ports with a key from
key_file.json (written into the directory it was started from). The inference and the
management key expire after ``token_expiration_min``; the "API" key does not, and it is
what renews the other two (``POST /token?type=inference|management`` on the management
port; TorchServe then rewrites key_file.json and the old key stops working at once).

This process, started beside TorchServe (``scripts/serve.sh start`` does it; the container
runs it too):

* renews each key ``--renew-margin-s`` seconds before it expires (at most half its lifetime
  before), so the keys live as long as the server; clients read key_file.json again when
  they are refused (HTTP 400 ``InvalidKeyException``);
* answers ``GET /live`` and ``GET /ready`` on ``--listen`` (default 127.0.0.1:8083) with
  200 or 503 and a small JSON status, never a key: live = TorchServe's frontend answers
  ``/ping``; ready = ``/ping`` is healthy and the model has a READY worker. Probes
  (Kubernetes, the container HEALTHCHECK, ``serve.sh status``) need no secret;
* on SIGUSR1 starts draining: ``/ready`` answers 503 from then on (``/live`` is unchanged),
  so a load balancer stops sending new requests while the ones in flight finish (the
  container's entry point sends it on SIGTERM, before it stops TorchServe);
* exits when key_file.json disappears after it was seen (``torchserve --stop`` deletes
  it), or on SIGTERM / SIGINT.

With ``--no-auth`` (TorchServe started with ``--disable-token-auth``, as the container
does with TOKEN_AUTH=off behind a gateway that authenticates) there are no keys: it only
answers the probes, and runs until SIGTERM / SIGINT.

Standard library only (it runs with the container's python3). Never goes through a proxy;
TorchServe is reached on loopback only.

    scripts/keykeeper.py [--config config.properties] [--key-file key_file.json | --no-auth]
                         [--listen 127.0.0.1:8083] [--model watermark]
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

if __package__:  # imported as scripts.keykeeper (tests)
    from .manage_models import LOOPBACK, load_properties
else:  # run as a script
    from manage_models import LOOPBACK, load_properties

REPO_ROOT = Path(__file__).resolve().parents[1]
RENEWABLE = ("inference", "management")
log = logging.getLogger("keykeeper")


class KeyFileError(RuntimeError):
    """key_file.json is missing or not what TorchServe writes."""


def read_keys(path: Path, attempts: int = 5) -> dict[str, Any]:
    """key_file.json as a dict. TorchServe rewrites it in place (not atomically), so a read
    that lands mid-write is retried a few times before it counts as an error."""
    for attempt in range(attempts):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if all(isinstance(data.get(k), dict) and data[k].get("key") for k in (*RENEWABLE, "API")):
                return data
        except FileNotFoundError:
            raise KeyFileError(f"{path}: not found (is TorchServe running from that directory?)") from None
        except (OSError, ValueError):
            pass
        time.sleep(0.05 * (attempt + 1))
    raise KeyFileError(f"{path}: expected TorchServe's keys (inference, management, API), got something else")


def expiry(entry: dict[str, Any]) -> datetime | None:
    """The 'expiration time' of a key entry (ISO 8601, UTC), None when absent or unreadable."""
    text = str(entry.get("expiration time") or "")
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def loopback_url(url: str, what: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK | {"0.0.0.0"}:
        raise SystemExit(f"keykeeper: {what}={url!r}: expected http://127.0.0.1:PORT (TorchServe on this host)")
    host = "127.0.0.1" if parsed.hostname == "0.0.0.0" else parsed.hostname
    return f"http://{host}:{parsed.port or 80}"


class Keeper:
    """Renews keys on time and knows whether TorchServe is live and ready."""

    def __init__(
        self, key_file: Path | None, inference: str, management: str, model: str, margin_s: float,
        timeout_s: float = 5.0,
    ) -> None:
        self.key_file = key_file  # None: token authorisation is off, no keys to keep
        self.inference = inference.rstrip("/")
        self.management = management.rstrip("/")
        self.model = model
        self.margin_s = margin_s
        self.timeout_s = timeout_s
        self.lifetime_s: dict[str, float] = {}  # remaining life of each key when first seen
        self.renewals = 0
        self.draining = threading.Event()  # set on SIGUSR1: /ready answers 503 from then on
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
        self._lock = threading.Lock()

    def _keys(self) -> dict[str, Any]:
        return {} if self.key_file is None else read_keys(self.key_file)

    def _call(self, method: str, url: str, key: str | None) -> tuple[int, bytes]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        request = urllib.request.Request(url, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout_s) as resp:  # noqa: S310 (loopback)
                return resp.status, resp.read(65536)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(65536)

    # ------------------------------------------------------------------ renewal
    def seconds_left(self, keys: dict[str, Any], which: str) -> float | None:
        expires = expiry(keys[which])
        return None if expires is None else (expires - datetime.now(timezone.utc)).total_seconds()

    def due_in(self, keys: dict[str, Any], which: str) -> float | None:
        """Seconds until ``which`` should be renewed (<= 0: now); None when it never expires."""
        left = self.seconds_left(keys, which)
        if left is None:
            return None
        key = keys[which]["key"]
        lifetime = self.lifetime_s.setdefault(f"{which}:{key}", max(left, 1.0))
        margin = min(self.margin_s, lifetime / 2)  # a short-lived key is renewed at half its life
        return left - margin

    def renew(self, which: str) -> None:
        with self._lock:
            api = read_keys(self.key_file)["API"]["key"]
            status, body = self._call("POST", f"{self.management}/token?type={which}", api)
            if status != 200:
                raise RuntimeError(f"renewing the {which} key: HTTP {status} {body[:200]!r}")
            self.renewals += 1
        log.info("renewed the %s key (key_file.json rewritten by TorchServe)", which)

    def tick(self) -> float:
        """Renew what is due; seconds until the next check."""
        if self.key_file is None:
            return 10.0
        keys = read_keys(self.key_file)
        waits = []
        for which in RENEWABLE:
            due = self.due_in(keys, which)
            if due is not None and due <= 0:
                self.renew(which)
                keys = read_keys(self.key_file)
                due = self.due_in(keys, which)
            if due is not None:
                waits.append(due)
        return max(0.5, min([10.0, *waits]))

    # ------------------------------------------------------------------- health
    def live(self) -> tuple[bool, str]:
        """TorchServe's frontend answers /ping (any HTTP answer: workers restart on their own)."""
        try:
            status, _ = self._call("GET", f"{self.inference}/ping", self._keys().get("inference", {}).get("key"))
        except (KeyFileError, OSError) as exc:
            return False, f"frontend not answering ({type(exc).__name__})"
        return status in (200, 500), f"/ping answered {status}"

    def ready(self) -> tuple[bool, str]:
        """/ping is 200 and the model has at least one READY worker, unless draining."""
        if self.draining.is_set():
            return False, "draining: the server is shutting down"
        try:
            keys = self._keys()
            status, _ = self._call("GET", f"{self.inference}/ping", keys.get("inference", {}).get("key"))
            if status != 200:
                return False, f"/ping answered {status}"
            described = f"{self.management}/models/{urllib.parse.quote(self.model)}"
            status, body = self._call("GET", described, keys.get("management", {}).get("key"))
        except (KeyFileError, OSError) as exc:
            return False, f"TorchServe not answering ({type(exc).__name__})"
        if status != 200:
            return False, f"model {self.model!r}: describe answered {status}"
        try:
            workers = [w for version in json.loads(body) for w in version.get("workers", [])]
        except (ValueError, TypeError, AttributeError):
            return False, "model describe: unexpected answer"
        ready = sum(1 for w in workers if w.get("status") == "READY")
        return ready > 0, f"{ready} of {len(workers)} workers READY"


def health_server(keeper: Keeper, host: str, port: int) -> ThreadingHTTPServer:
    class Probe(BaseHTTPRequestHandler):
        server_version = "keykeeper"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            checks = {"/live": keeper.live, "/ready": keeper.ready}
            check = checks.get(urllib.parse.urlsplit(self.path).path)
            if check is None:
                ok, detail, code = False, "unknown path; use /live or /ready", 404
            else:
                ok, detail = check()
                code = 200 if ok else 503
            body = json.dumps({"ok": ok, "detail": detail}).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - probes every few seconds: quiet
            pass

    server = ThreadingHTTPServer((host, port), Probe)
    server.daemon_threads = True
    return server


def run(keeper: Keeper, server: ThreadingHTTPServer | None, stop: threading.Event, wait_for_keys_s: float) -> int:
    """Renew until the key file goes away (TorchServe stopped) or ``stop`` is set."""
    if server is not None:
        threading.Thread(target=server.serve_forever, name="probes", daemon=True).start()
    deadline = time.monotonic() + wait_for_keys_s
    seen = False
    try:
        while not stop.is_set():
            try:
                wait = keeper.tick()
                seen = True
            except KeyFileError as exc:
                if seen or time.monotonic() > deadline:
                    log.info("stopping: %s", exc)
                    return 0 if seen else 1
                wait = 1.0
            except (RuntimeError, OSError) as exc:  # TorchServe busy or restarting: try again soon
                log.warning("%s", exc)
                wait = 5.0
            stop.wait(wait)
        log.info("stopping: signal received")
        return 0
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "config.properties",
                        help="TorchServe config (inference/management addresses); default config.properties")
    parser.add_argument("--key-file", type=Path, default=REPO_ROOT / "key_file.json",
                        help="key_file.json of the running server (default: the repo root's)")
    parser.add_argument("--no-auth", action="store_true",
                        help="TorchServe runs with --disable-token-auth: no keys to renew, probes send none")
    parser.add_argument("--listen", default="127.0.0.1:8083",
                        help="HOST:PORT of the keyless /live and /ready probes (default 127.0.0.1:8083; 'off': none)")
    parser.add_argument("--model", default="watermark", help="model whose workers /ready checks (default watermark)")
    parser.add_argument("--renew-margin-s", type=float, default=600.0,
                        help="renew a key this many seconds before it expires (default 600; at most half its lifetime)")
    parser.add_argument("--wait-for-keys-s", type=float, default=300.0,
                        help="how long to wait for key_file.json to appear at start (default 300)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s keykeeper %(levelname)s %(message)s")
    if args.renew_margin_s <= 0:
        parser.error(f"--renew-margin-s={args.renew_margin_s}: must be > 0")
    try:
        props = load_properties(args.config)
    except OSError as exc:
        parser.error(f"--config {args.config}: cannot read ({exc.strerror or exc})")
    inference = loopback_url(props.get("inference_address", "http://127.0.0.1:8080"), "inference_address")
    management = loopback_url(props.get("management_address", "http://127.0.0.1:8081"), "management_address")
    keeper = Keeper(None if args.no_auth else args.key_file, inference, management, args.model, args.renew_margin_s)
    server = None
    if args.listen != "off":
        host, _, port = args.listen.rpartition(":")
        if not host or not port.isdigit():
            parser.error(f"--listen={args.listen!r}: expected HOST:PORT or off")
        try:
            server = health_server(keeper, host, int(port))
        except OSError as exc:
            parser.error(f"--listen={args.listen!r}: cannot listen ({exc.strerror or exc})")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: keeper.draining.set())  # only sets the flag: signal-safe
    kept = "no keys (token authorisation off)" if args.no_auth else f"{args.key_file} (margin {args.renew_margin_s:.0f} s)"
    log.info("keeping %s, probes on %s", kept, args.listen)
    return run(keeper, server, stop, args.wait_for_keys_s)


if __name__ == "__main__":
    sys.exit(main())
