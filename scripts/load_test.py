#!/usr/bin/env python3
"""Bounded load test (and optional worker-kill fault test) of a local TorchServe watermark model.

    .venv/bin/python scripts/load_test.py --clients 32 --duration 60          # make load-test
    .venv/bin/python scripts/load_test.py --clients 8 --duration 20 --kill-worker-after 5

N client threads send real image bytes (demo_data/test/*.jpg, or --synthetic N generated
JPEGs) to /predictions/MODEL for T seconds, then stop by themselves (also after
--max-requests). Loopback only. The inference/management keys come from key_file.json.

Every request carries a unique ``X-Request-Tag`` (client and sequence number) that the
handler echoes; the report counts

* errors: non-200 answers and requests without any answer;
* lost: requests that got no answer, or a 200 whose tag is missing;
* duplicated: a tag that came back more than once; misrouted: a tag that is not the one sent;
* mismatched: a 200 whose probability differs from the same image sent alone (reference
  pass before the run; tolerance --prob-tol) or that names another version.

Latency percentiles, requests/s, and the resident memory (RSS) of the server's process
tree (the Java frontend listening on the inference port plus its Python workers) after a
warm-up and after the run. With --kill-worker-after S the default version's worker(s)
are SIGKILLed S seconds into the run (PIDs from the management API, checked to be children
of the server) and the report gives how in-flight requests ended and the recovery time:
worker_ready_after_s (kill -> a new worker READY on the management API), verdict_gap_s
(the longest stretch without any verdict around the kill, as clients see it) and
first_ok_sent_after_kill_s (kill -> first verdict for a request sent after the kill).

Exit status 0 when the run meets the acceptance: no errors, nothing lost, duplicated,
misrouted or mismatched, memory growth <= --max-memory-growth % (with a kill: failures
only in the kill window, every request answered, service recovered).
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import math
import os
import signal
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

# The same directory: shared parsing of config.properties (run as a script, scripts/ is on sys.path).
from manage_models import load_properties  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TAG_HEADER = "X-Request-Tag"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def loopback_session() -> requests.Session:
    """A session that ignores http(s)_proxy: the server is on loopback and the keys must not leave it."""
    session = requests.Session()
    session.trust_env = False
    return session


class LoadTestError(Exception):
    pass


@dataclass
class Result:
    tag: str
    image: int
    sent: float  # seconds since the run started
    latency: float | None  # None: no answer
    status: int | None
    echoed: str | None
    probability: float | None = None
    version: str | None = None
    error: str | None = None


# ------------------------------------------------------------------------- setup
def loopback_url(url: str, what: str) -> str:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK:
        raise LoadTestError(f"{what} {url!r}: only http:// on loopback is allowed ({', '.join(sorted(LOOPBACK))})")
    return url.rstrip("/")


def read_keys(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: data[name]["key"] for name in ("inference", "management")}
    except FileNotFoundError:
        raise LoadTestError(f"key file {path} not found; is TorchServe running (scripts/serve.sh start)?") from None
    except (ValueError, KeyError, TypeError):
        raise LoadTestError(f"key file {path}: expected inference and management keys") from None


def load_images(folder: Path | None, synthetic: int, limit: int) -> list[bytes]:
    if synthetic:
        return synthetic_jpegs(synthetic)
    if folder is None or not folder.is_dir():
        raise LoadTestError(f"image folder {folder} not found; run `make demo` or pass --images DIR or --synthetic N")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise LoadTestError(f"no {'/'.join(sorted(IMAGE_SUFFIXES))} files in {folder}")
    return [p.read_bytes() for p in files]


def synthetic_jpegs(count: int, width: int = 480, height: int = 360) -> list[bytes]:
    import numpy as np
    from PIL import Image, ImageDraw

    images = []
    for i in range(count):
        rng = np.random.default_rng(1000 + i)
        yy, xx = np.mgrid[0:height, 0:width]
        base = np.stack([(xx * (i + 3)) % 256, (yy * (i + 5)) % 256, (xx + yy + 17 * i) % 256], -1)
        noise = rng.integers(0, 30, size=(height, width, 3))
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype("uint8"), "RGB")
        ImageDraw.Draw(img).text((width - 140, height - 30), f"@shop_{i}", fill=(255, 255, 255))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88)
        images.append(buf.getvalue())
    return images


def server_processes(port: int, pid: int | None):
    """psutil Processes: the Java frontend listening on ``port`` (or ``pid``) and its descendants."""
    try:
        import psutil
    except ImportError:
        return None
    if pid is None:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                pid = conn.pid
                break
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        return root, psutil
    except psutil.NoSuchProcess:
        return None


def tree_rss(found) -> dict[str, Any] | None:
    if found is None:
        return None
    root, psutil = found
    procs = [root]
    try:
        procs += root.children(recursive=True)
    except psutil.NoSuchProcess:
        return None
    total, parts = 0, []
    for proc in procs:
        try:
            rss = proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        total += rss
        parts.append({"pid": proc.pid, "name": proc.name(), "rss_mb": round(rss / 2**20, 1)})
    return {"total_mb": round(total / 2**20, 1), "processes": parts}


# --------------------------------------------------------------------------- client
class Client:
    def __init__(self, url: str, key: str, timeout: tuple[float, float]) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/octet-stream"}
        self.timeout = timeout

    def send(self, session: requests.Session, data: bytes, tag: str, image: int, started: float) -> Result:
        t0 = time.monotonic()
        result = Result(tag=tag, image=image, sent=t0 - started, latency=None, status=None, echoed=None)
        try:
            resp = session.put(self.url, data=data, headers={**self.headers, TAG_HEADER: tag}, timeout=self.timeout)
        except requests.RequestException as exc:
            result.error = f"{type(exc).__name__}: {exc}"[:300]
            return result
        result.latency = time.monotonic() - t0
        result.status = resp.status_code
        result.echoed = resp.headers.get(TAG_HEADER)
        if resp.status_code == 200:
            try:
                body = resp.json()
                result.probability = float(body["probability"])
                result.version = str(body["version"])
            except (ValueError, KeyError, TypeError):
                result.error = f"200 without a verdict: {resp.text[:200]}"
        else:
            result.error = f"{resp.status_code}: {resp.text[:200]}"
        return result


def run_clients(client: Client, images: list[bytes], clients: int, duration: float, max_requests: int,
                prefix: str) -> tuple[list[Result], float]:
    results: list[Result] = []
    lock = threading.Lock()
    counter = itertools.count()
    started = time.monotonic()
    deadline = started + duration

    def worker(cid: int) -> None:
        with loopback_session() as session:
            for seq in itertools.count():
                if time.monotonic() >= deadline or next(counter) >= max_requests:
                    return
                image = (cid * 7 + seq) % len(images)
                result = client.send(session, images[image], f"{prefix}c{cid:02d}-{seq:06d}", image, started)
                with lock:
                    results.append(result)

    threads = [threading.Thread(target=worker, args=(cid,), daemon=True) for cid in range(clients)]
    for t in threads:
        t.start()
    for t in threads:  # bounded: each thread stops at the deadline plus at most one request timeout
        t.join(timeout=duration + client.timeout[0] + client.timeout[1] + 30)
    elapsed = time.monotonic() - started
    if any(t.is_alive() for t in threads):
        raise LoadTestError("client threads did not stop in time")
    return results, elapsed


# ----------------------------------------------------------------------------- fault
class WorkerKiller(threading.Thread):
    """SIGKILL the default version's workers after ``delay`` s; watch for READY replacements."""

    def __init__(self, management: str, key: str, model: str, delay: float, server, limit: float) -> None:
        super().__init__(daemon=True)
        self.management, self.model, self.delay, self.server, self.limit = management, model, delay, server, limit
        self.headers = {"Authorization": f"Bearer {key}"}
        self.killed_at: float | None = None  # monotonic
        self.ready_at: float | None = None
        self.old_pids: list[int] = []
        self.new_pids: list[int] = []
        self.error: str | None = None

    def describe(self) -> dict[str, Any]:
        with loopback_session() as session:
            resp = session.get(f"{self.management}/models/{self.model}", headers=self.headers, timeout=(2, 5))
        resp.raise_for_status()
        return resp.json()[0]

    def run(self) -> None:
        try:
            time.sleep(self.delay)
            self.old_pids = [w["pid"] for w in self.describe()["workers"] if w.get("pid")]
            children = set()
            if self.server is not None:
                root, _psutil = self.server
                children = {p.pid for p in root.children(recursive=True)}
            for pid in self.old_pids:
                if self.server is not None and pid not in children:
                    raise LoadTestError(f"worker pid {pid} is not a child of the server; not killing it")
                os.kill(pid, signal.SIGKILL)
            self.killed_at = time.monotonic()
            deadline = self.killed_at + self.limit
            while time.monotonic() < deadline:
                try:
                    workers = self.describe()["workers"]
                except (requests.RequestException, ValueError, KeyError, IndexError):
                    workers = []
                ready = [w["pid"] for w in workers if w.get("status") == "READY" and w.get("pid") not in self.old_pids]
                if ready and len(ready) >= len(self.old_pids):
                    self.ready_at, self.new_pids = time.monotonic(), ready
                    return
                time.sleep(0.2)
        except Exception as exc:  # reported, never raised from the thread
            self.error = f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- report
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[rank]


def summarise(results: list[Result], elapsed: float, reference: dict[int, tuple[float, str]], tol: float,
              kill_window: tuple[float, float] | None) -> dict[str, Any]:
    seen: dict[str, int] = {}
    lost = duplicated = misrouted = mismatched = 0
    statuses: dict[str, int] = {}
    errors_outside_window = 0
    for r in results:
        statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
        if r.status is None:
            lost += 1
        elif r.echoed is not None:
            if r.echoed != r.tag:
                misrouted += 1
            seen[r.echoed] = seen.get(r.echoed, 0) + 1
        elif r.status == 200:
            lost += 1  # a verdict that cannot be matched to its request
        if r.status == 200 and r.probability is not None and r.image in reference:
            ref_prob, ref_version = reference[r.image]
            if abs(r.probability - ref_prob) > tol or r.version != ref_version:
                mismatched += 1
        if r.status != 200 and kill_window is not None:
            start, end = kill_window
            if not (start - 1.0 <= r.sent + (r.latency or 0.0) and r.sent <= end + 1.0):
                errors_outside_window += 1
    duplicated = sum(n - 1 for n in seen.values() if n > 1)
    answered = [r for r in results if r.latency is not None]
    ok = [r for r in answered if r.status == 200]
    latencies = [r.latency * 1000 for r in answered]
    ok_lat = [r.latency * 1000 for r in ok]
    return {
        "requests": len(results),
        "ok": len(ok),
        "errors": len(results) - len(ok),
        "statuses": statuses,
        "lost": lost,
        "duplicated": duplicated,
        "misrouted": misrouted,
        "mismatched": mismatched,
        "elapsed_s": round(elapsed, 2),
        "requests_per_s": round(len(ok) / elapsed, 2) if elapsed else None,
        "latency_ms": {
            "p50": rnd(percentile(ok_lat, 50)), "p95": rnd(percentile(ok_lat, 95)),
            "p99": rnd(percentile(ok_lat, 99)), "max": rnd(max(ok_lat) if ok_lat else None),
            "max_any_answer": rnd(max(latencies) if latencies else None),
        },
        "errors_outside_kill_window": errors_outside_window if kill_window else None,
        "error_samples": sorted({r.error for r in results if r.error})[:5],
    }


def rnd(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scripts/load_test.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unmeasured load first (default 5)")
    p.add_argument("--max-requests", type=int, default=100_000, help="hard cap on requests (default 100000)")
    p.add_argument("--config", type=Path, default=None, help="default: $SERVE_CONFIG or config.properties")
    p.add_argument("--url", default=None, help="inference base URL (default: inference_address of the config)")
    p.add_argument("--management-url", default=None, help="default: management_address of the config")
    p.add_argument("--key-file", type=Path, default=REPO_ROOT / "key_file.json")
    p.add_argument("--model", default="watermark")
    p.add_argument("--images", type=Path, default=REPO_ROOT / "demo_data" / "test", help="folder of images")
    p.add_argument("--max-images", type=int, default=64, help="use at most this many images (default 64)")
    p.add_argument("--synthetic", type=int, default=0, help="generate N JPEGs instead of reading --images")
    p.add_argument("--timeout", type=float, default=None,
                   help="read timeout per request, s (default: the model's responseTimeout + 10)")
    p.add_argument("--prob-tol", type=float, default=1e-4, help="allowed |p - p_alone| (default 1e-4)")
    p.add_argument("--max-memory-growth", type=float, default=10.0, help="percent (default 10)")
    p.add_argument("--pid", type=int, default=None, help="server (Java) PID for memory (default: found by port)")
    p.add_argument("--kill-worker-after", type=float, default=None, help="SIGKILL the worker(s) after S seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the report here")
    return p


def check_range(parser: argparse.ArgumentParser, args) -> None:
    if not 1 <= args.clients <= 256:
        parser.error(f"--clients {args.clients}: allowed 1..256")
    if not 0 < args.duration <= 3600:
        parser.error(f"--duration {args.duration}: allowed 0 < T <= 3600 seconds")
    if not 0 <= args.warmup <= 600:
        parser.error(f"--warmup {args.warmup}: allowed 0..600 seconds")
    if not 1 <= args.max_requests <= 10_000_000:
        parser.error(f"--max-requests {args.max_requests}: allowed 1..10000000")
    if args.kill_worker_after is not None and not 0 < args.kill_worker_after < args.duration:
        parser.error(f"--kill-worker-after {args.kill_worker_after}: allowed 0 < S < --duration ({args.duration})")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_range(parser, args)
    try:
        report = run(args)
    except LoadTestError as exc:
        print(f"load_test.py: error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    print_report(report)
    return 0 if report["passed"] else 1


def run(args) -> dict[str, Any]:
    config = args.config or Path(os.environ.get("SERVE_CONFIG") or REPO_ROOT / "config.properties")
    props = load_properties(config) if config.is_file() else {}
    base = loopback_url(args.url or props.get("inference_address") or "http://127.0.0.1:8080", "inference URL")
    management = loopback_url(
        args.management_url or props.get("management_address") or "http://127.0.0.1:8081", "management URL"
    )
    keys = read_keys(args.key_file)
    images = load_images(args.images, args.synthetic, args.max_images)
    port = urllib.parse.urlsplit(base).port or 80

    mgmt_headers = {"Authorization": f"Bearer {keys['management']}"}
    try:
        with loopback_session() as session:
            described = session.get(f"{management}/models/{args.model}", headers=mgmt_headers, timeout=(2, 10))
    except requests.RequestException as exc:
        raise LoadTestError(f"cannot reach the management API at {management} ({exc})") from None
    if described.status_code != 200:
        raise LoadTestError(f"describe {args.model} on {management}: HTTP {described.status_code} {described.text[:200]}")
    model = described.json()[0]
    response_timeout = float(model.get("responseTimeout") or 120)
    read_timeout = args.timeout or response_timeout + 10
    client = Client(f"{base}/predictions/{args.model}", keys["inference"], (5.0, read_timeout))
    server = server_processes(port, args.pid)

    memory_cold = tree_rss(server)
    # reference: every image alone, one at a time
    reference: dict[int, tuple[float, str]] = {}
    single_ms = []
    with loopback_session() as session:
        for i, data in enumerate(images):
            r = client.send(session, data, f"ref-{i:04d}", i, time.monotonic())
            if r.status != 200 or r.probability is None:
                raise LoadTestError(f"reference request for image {i} failed: {r.error}")
            reference[i] = (r.probability, r.version)
            single_ms.append(r.latency * 1000)

    warm = None
    if args.warmup > 0:
        warm_results, warm_elapsed = run_clients(client, images, args.clients, args.warmup, args.max_requests, "w-")
        warm = summarise(warm_results, warm_elapsed, reference, args.prob_tol, None)
    memory_before = tree_rss(server)

    killer = None
    if args.kill_worker_after is not None:
        killer = WorkerKiller(management, keys["management"], args.model, args.kill_worker_after, server,
                              limit=args.duration + 120)
    started = time.monotonic()
    if killer:
        killer.start()
    results, elapsed = run_clients(client, images, args.clients, args.duration, args.max_requests, "")
    if killer:
        killer.join(timeout=130)
    memory_after = tree_rss(server)

    kill_window = None
    fault = None
    if killer:
        if killer.killed_at is not None:
            kill_at = killer.killed_at - started
            ready_at = (killer.ready_at - started) if killer.ready_at else None
            kill_window = (kill_at, ready_at if ready_at is not None else float("inf"))
            done_ok = sorted(r.sent + r.latency for r in results if r.status == 200)
            first_ok = min((r.sent + r.latency for r in results if r.status == 200 and r.sent > kill_at), default=None)
            # longest stretch without any verdict around the kill (normal: about one batch time)
            horizon = kill_at + (ready_at - kill_at if ready_at is not None else 0.0) + 10.0
            gaps = [b - a for a, b in zip(done_ok, done_ok[1:]) if b > kill_at and a < horizon]
            failed = [r for r in results if r.status != 200]
            fault = {
                "killed_pids": killer.old_pids,
                "new_pids": killer.new_pids,
                "killed_at_s": round(kill_at, 2),
                "worker_ready_after_s": None if ready_at is None else round(ready_at - kill_at, 2),
                "verdict_gap_s": round(max(gaps), 2) if gaps else None,
                "first_ok_sent_after_kill_s": None if first_ok is None else round(first_ok - kill_at, 2),
                "failed_requests": len(failed),
                "failed_statuses": sorted({str(r.status) for r in failed}),
                "failed_bodies": sorted({(r.error or "")[:160] for r in failed})[:4],
                "max_failed_latency_ms": rnd(max((r.latency or 0) * 1000 for r in failed) if failed else None),
            }
        else:
            fault = {"error": killer.error or "worker was not killed"}

    summary = summarise(results, elapsed, reference, args.prob_tol, kill_window)
    growth = None
    if memory_before and memory_after and memory_before["total_mb"]:
        growth = round(100.0 * (memory_after["total_mb"] - memory_before["total_mb"]) / memory_before["total_mb"], 2)
    checks = {
        "nothing_lost": summary["lost"] == 0,
        "no_duplicates": summary["duplicated"] == 0,
        "no_misrouted": summary["misrouted"] == 0,
        "no_mismatched": summary["mismatched"] == 0,
    }
    if killer:
        checks["worker_killed_and_replaced"] = bool(fault and fault.get("new_pids"))
        checks["recovered"] = bool(fault and fault.get("first_ok_sent_after_kill_s") is not None)
        checks["errors_only_in_kill_window"] = summary["errors_outside_kill_window"] == 0
        checks["no_hang_beyond_response_timeout"] = (
            summary["latency_ms"]["max_any_answer"] or 0
        ) <= (response_timeout + 5) * 1000 and summary["statuses"].get("None", 0) == 0
    else:
        checks["zero_errors"] = summary["errors"] == 0
        checks["memory_growth_ok"] = growth is None or growth <= args.max_memory_growth
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "config": {
            "clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup,
            "images": len(images), "url": client.url, "model_version": model.get("modelVersion"),
            "batch_size": model.get("batchSize"), "max_batch_delay_ms": model.get("maxBatchDelay"),
            "workers": len(model.get("workers") or []), "response_timeout_s": response_timeout,
        },
        "single_request_ms": {"p50": rnd(percentile(single_ms, 50)), "max": rnd(max(single_ms))},
        "warmup": None if warm is None else {k: warm[k] for k in ("requests", "errors", "requests_per_s")},
        "run": summary,
        "memory_mb": {
            "cold": None if memory_cold is None else memory_cold["total_mb"],
            "before": None if memory_before is None else memory_before["total_mb"],
            "after": None if memory_after is None else memory_after["total_mb"],
            "growth_percent": growth,
            "processes_after": None if memory_after is None else memory_after["processes"],
        },
        "fault": fault,
    }


def print_report(report: dict[str, Any]) -> None:
    cfg, run_, mem = report["config"], report["run"], report["memory_mb"]
    lat = run_["latency_ms"]
    print(f"load test: {cfg['clients']} clients x {cfg['duration_s']:g} s on {cfg['url']} "
          f"(version {cfg['model_version']}, batchSize {cfg['batch_size']}, maxBatchDelay {cfg['max_batch_delay_ms']} ms, "
          f"{cfg['workers']} worker(s), {cfg['images']} images)")
    print(f"  single request alone: p50 {report['single_request_ms']['p50']} ms")
    print(f"  requests {run_['requests']}, ok {run_['ok']}, errors {run_['errors']} {run_['statuses']}, "
          f"{run_['requests_per_s']} req/s")
    print(f"  latency ms: p50 {lat['p50']}, p95 {lat['p95']}, p99 {lat['p99']}, max {lat['max']}")
    print(f"  lost {run_['lost']}, duplicated {run_['duplicated']}, misrouted {run_['misrouted']}, "
          f"mismatched {run_['mismatched']}")
    print(f"  server RSS MB (java + workers): cold {mem['cold']}, after warm-up {mem['before']}, "
          f"after run {mem['after']} (growth {mem['growth_percent']} %)")
    if report["fault"]:
        print(f"  fault: {json.dumps(report['fault'])}")
    if run_["error_samples"]:
        print(f"  error samples: {run_['error_samples']}")
    failed = [name for name, ok in report["checks"].items() if not ok]
    print("PASS" if report["passed"] else f"FAIL: {', '.join(failed)}")


if __name__ == "__main__":
    sys.exit(main())
