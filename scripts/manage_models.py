#!/usr/bin/env python3
"""Manage the versions of the watermark model on a running local TorchServe.

    scripts/manage_models.py list                                  versions, default, workers
    scripts/manage_models.py register watermark-v1.1.mar [--workers N] [--set-default]
    scripts/manage_models.py set-default 1.1                       /predictions/watermark -> 1.1
    scripts/manage_models.py rollback                              back to the previous default
    scripts/manage_models.py scale [VERSION] --workers N           workers of one version
    scripts/manage_models.py unregister 1.0                        remove a version that is not the default

Talks to the management API of TorchServe on loopback only (management_address of
config.properties; $SERVE_CONFIG like scripts/serve.sh), with the "management" key from
key_file.json, which TorchServe writes into the directory it was started from (the repo
root with scripts/serve.sh). Build versioned archives with
``scripts/create_mar.sh --version 1.1 --versioned`` (-> model_store/watermark-v1.1.mar).

Archives are registered by file name from the model store only: config.properties has
allowed_urls=^$, so TorchServe refuses every http(s):// or file:// URL (ShellTorch).

``set-default`` and ``rollback`` keep a small history of defaults in a state file
(default logs/model_versions.json) because TorchServe does not remember the previous
default; rollback skips versions that are no longer registered. Standard library only, so
it also runs with the system python3 (e.g. inside the container).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_WORKERS = 16
HISTORY_LIMIT = 20
PROG = "models.py"


class CliError(Exception):
    """A problem to report in one line (exit status 1)."""


class KeyRefused(CliError):
    """TorchServe answered InvalidKeyException (expired, renewed or from another start)."""


# ------------------------------------------------------------------ config, key, state
def load_properties(path: Path) -> dict[str, str]:
    """Java .properties subset: key=value, '#' comments, backslash line continuation."""
    props: dict[str, str] = {}
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", "!"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        line, pending = pending + line, ""
        key, _, value = line.partition("=")
        props[key.strip()] = value.strip()
    return props


def read_key(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data["management"]["key"])
    except FileNotFoundError:
        raise CliError(
            f"key file {path} not found; TorchServe writes it into the directory it was started from at every "
            "start (scripts/serve.sh start: the repo root). Is TorchServe running? Or pass --key-file"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise CliError(f"key file {path}: expected JSON with a \"management\": {{\"key\": ...}} entry") from None


def load_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise CliError(f"state file {path} is not valid JSON ({exc}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def save_state(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model_versions.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


# -------------------------------------------------------------------- the API client
class Management:
    """The management API of a local TorchServe. With ``key_file``, a key refused as invalid is
    read again from that file once (scripts/keykeeper.py renews keys before they expire)."""

    def __init__(self, url: str, key: str, timeout: float, key_file: Path | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise CliError(f"management URL {url!r}: expected http://127.0.0.1:PORT")
        if parsed.hostname not in LOOPBACK:
            raise CliError(
                f"management URL {url!r}: host {parsed.hostname!r} is not loopback; this script only manages "
                f"a local TorchServe (allowed hosts: {', '.join(sorted(LOOPBACK))})"
            )
        self.url = url.rstrip("/")
        self.key = key
        self.key_file = key_file
        self.timeout = timeout
        # Loopback only, and never through a proxy: http_proxy/https_proxy in the
        # environment would otherwise receive the management key.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, query: dict[str, Any] | None = None, timeout: float | None = None):
        try:
            return self._call(method, path, query, timeout)
        except KeyRefused:
            renewed = read_key(self.key_file) if self.key_file is not None else self.key
            if renewed == self.key:
                raise
            self.key = renewed  # renewed since we read it: once more with the new key
            return self._call(method, path, query, timeout)

    def _call(self, method: str, path: str, query: dict[str, Any] | None, timeout: float | None):
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        request = urllib.request.Request(url, method=method, headers={"Authorization": f"Bearer {self.key}"})
        try:
            with self._opener.open(request, timeout=timeout or self.timeout) as resp:  # noqa: S310 (loopback)
                body = resp.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                detail = f"{err.get('type', 'error')}: {err.get('message', raw.decode(errors='replace'))}"
            except (ValueError, AttributeError):
                err, detail = {}, raw.decode(errors="replace").strip() or exc.reason
            if isinstance(err, dict) and err.get("type") == "InvalidKeyException":
                raise KeyRefused(
                    f"TorchServe refused the management key ({detail}); key_file.json changes at every start and "
                    "when scripts/keykeeper.py renews the keys: pass the --key-file of the running server"
                ) from None
            raise ApiError(exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the management API at {self.url} ({reason}); is TorchServe running? "
                "(scripts/serve.sh start)"
            ) from None

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every registered version (describe of /models/MODEL/all); [] if the model is unknown."""
        try:
            return self.call("GET", f"/models/{q(model)}/all") or []
        except ApiError as exc:
            if exc.status == 404:
                return []
            raise

    def default_version(self, model: str) -> str | None:
        try:
            described = self.call("GET", f"/models/{q(model)}") or []
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return str(described[0]["modelVersion"]) if described else None


class ApiError(CliError):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"TorchServe answered {status} {detail}")
        self.status = status


def q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


# ------------------------------------------------------------------------- helpers
def workers_arg(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers {value!r}: allowed is an integer 0..{MAX_WORKERS}") from None
    if not 0 <= number <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"--workers {number}: allowed is 0..{MAX_WORKERS}")
    return number


def version_arg(value: str) -> str:
    parts = value.split(".")
    if not value or len(parts) > 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"version {value!r}: allowed are digits and dots, e.g. 1.0 or 2.3.1")
    return value


def registered_names(entries: list[dict[str, Any]]) -> str:
    return ", ".join(str(e["modelVersion"]) for e in entries) or "none"


def require_registered(api: Management, model: str, version: str) -> list[dict[str, Any]]:
    entries = api.versions(model)
    if not any(str(e["modelVersion"]) == version for e in entries):
        raise CliError(f"version {version} of model {model!r} is not registered; registered: {registered_names(entries)}")
    return entries


def archive_in_store(arg: str, store: Path) -> Path:
    """The archive ``arg`` names, which must be a .mar file inside the model store."""
    if "://" in arg or arg.lower().startswith(("s3:", "file:", "http:", "https:")):
        raise CliError(
            f"{arg!r} is a URL; register takes the file name of an archive already in the model store {store} "
            "(TorchServe refuses URLs here: allowed_urls=^$); copy the archive there first"
        )
    candidate = Path(arg)
    if len(candidate.parts) > 1 or candidate.is_absolute():
        resolved = candidate.resolve()
        if resolved.parent != store.resolve():
            raise CliError(
                f"{arg!r} is not in the model store {store}; copy it there, or build it there with "
                "scripts/create_mar.sh --versioned"
            )
        candidate = Path(resolved.name)
    name = candidate.name
    if not name.endswith(".mar"):
        raise CliError(f"{arg!r}: allowed is a .mar archive built by scripts/create_mar.sh")
    path = store / name
    if not path.is_file():
        available = sorted(p.name for p in store.glob("*.mar")) if store.is_dir() else []
        raise CliError(
            f"{name!r} not found in the model store {store}; archives there: {', '.join(available) or 'none'} "
            "(build one with scripts/create_mar.sh --version V --versioned)"
        )
    return path


def read_manifest(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as mar:
            manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        model = manifest["model"]
        return str(model["modelName"]), str(model["modelVersion"])
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise CliError(f"{path}: not a TorchServe archive with MAR-INF/MANIFEST.json ({exc})") from None


def remember_default(state: dict[str, Any], model: str, previous: str | None) -> None:
    history = state.setdefault(model, {}).setdefault("previous_defaults", [])
    if previous is not None:
        history.append(previous)
    del history[:-HISTORY_LIMIT]


def set_default(api: Management, model: str, version: str) -> None:
    api.call("PUT", f"/models/{q(model)}/{q(version)}/set-default")


# ------------------------------------------------------------------------ commands
def cmd_list(api: Management, args, state: dict[str, Any]) -> int:
    entries = api.versions(args.model)
    if not entries:
        raise CliError(f"model {args.model!r} is not registered on {api.url}")
    default = api.default_version(args.model)
    rows = []
    for entry in sorted(entries, key=lambda e: [int(p) for p in str(e["modelVersion"]).split(".") if p.isdigit()]):
        workers = entry.get("workers") or []
        rows.append(
            {
                "version": str(entry["modelVersion"]),
                "default": str(entry["modelVersion"]) == default,
                "archive": entry.get("modelUrl"),
                "workers": len(workers),
                "min_workers": entry.get("minWorkers"),
                "max_workers": entry.get("maxWorkers"),
                "status": [w.get("status") for w in workers],
                "pids": [w.get("pid") for w in workers],
                "batch_size": entry.get("batchSize"),
                "max_batch_delay_ms": entry.get("maxBatchDelay"),
            }
        )
    history = state.get(args.model, {}).get("previous_defaults", [])
    if args.json:
        print(json.dumps({"model": args.model, "default": default, "versions": rows, "previous_defaults": history}))
        return 0
    print(f"model {args.model} on {api.url}: default version {default}")
    header = f"{'VERSION':<10}{'DEFAULT':<9}{'ARCHIVE':<28}{'WORKERS':<9}{'STATUS':<16}{'PIDS':<16}{'BATCH':<7}DELAY_MS"
    print(header)
    for r in rows:
        print(
            f"{r['version']:<10}{'*' if r['default'] else '':<9}{str(r['archive']):<28}"
            f"{r['workers']}/{r['max_workers']:<7}{','.join(map(str, r['status'])) or '-':<16}"
            f"{','.join(map(str, r['pids'])) or '-':<16}{r['batch_size']!s:<7}{r['max_batch_delay_ms']}"
        )
    if history:
        print(f"previous defaults (rollback goes back to the last): {', '.join(history)}")
    return 0


def cmd_register(api: Management, args, state: dict[str, Any]) -> int:
    path = archive_in_store(args.archive, args.model_store)
    name, version = read_manifest(path)
    if name != args.model:
        raise CliError(f"{path.name} holds model {name!r}, not {args.model!r}; pass --model {name} to manage it")
    entries = api.versions(name)
    for entry in entries:
        if str(entry["modelVersion"]) == version:
            raise CliError(
                f"version {version} of {name!r} is already registered (from {entry.get('modelUrl')}); unregister it "
                "first, or build the new archive with another --version"
            )
    workers = args.workers if args.workers is not None else 1
    if workers < 1:
        raise CliError("register --workers 0: a new version needs at least 1 worker (allowed: 1..16)")
    print(f"registering {path.name} (model {name}, version {version}) with {workers} worker(s) ...", flush=True)
    api.call(
        "POST", "/models",
        {"url": path.name, "initial_workers": workers, "synchronous": "true"},
        timeout=args.register_timeout,
    )
    # TorchServe may take minWorkers/maxWorkers from the archive; make the count the one asked for.
    api.call(
        "PUT", f"/models/{q(name)}/{q(version)}",
        {"min_worker": workers, "max_worker": workers, "synchronous": "true"}, timeout=args.register_timeout,
    )
    print(f"registered {name} {version}; default stays {api.default_version(name)}")
    if args.set_default:
        return cmd_set_default(api, argparse.Namespace(**{**vars(args), "version": version}), state)
    return 0


def cmd_set_default(api: Management, args, state: dict[str, Any]) -> int:
    require_registered(api, args.model, args.version)
    current = api.default_version(args.model)
    if current == args.version:
        print(f"{args.model} {args.version} is already the default")
        return 0
    set_default(api, args.model, args.version)
    remember_default(state, args.model, current)
    save_state(args.state_file, state)
    print(f"default of {args.model}: {current} -> {args.version} (rollback returns to {current})")
    return 0


def cmd_rollback(api: Management, args, state: dict[str, Any]) -> int:
    entries = api.versions(args.model)
    registered = {str(e["modelVersion"]) for e in entries}
    current = api.default_version(args.model)
    history = state.get(args.model, {}).get("previous_defaults", [])
    skipped = []
    while history:
        candidate = history.pop()
        if candidate in registered and candidate != current:
            set_default(api, args.model, candidate)
            save_state(args.state_file, state)
            note = f" (skipped no longer registered: {', '.join(skipped)})" if skipped else ""
            print(f"default of {args.model}: {current} -> {candidate} (rolled back){note}")
            return 0
        if candidate != current:
            skipped.append(candidate)
    save_state(args.state_file, state)
    raise CliError(
        f"no previous default of {args.model!r} to roll back to in {args.state_file} (current default {current}; "
        f"registered: {registered_names(entries)}); use set-default VERSION"
    )


def cmd_scale(api: Management, args, state: dict[str, Any]) -> int:
    version = args.version or api.default_version(args.model)
    if version is None:
        raise CliError(f"model {args.model!r} is not registered on {api.url}")
    require_registered(api, args.model, version)
    if args.workers == 0 and version == api.default_version(args.model):
        raise CliError(
            f"scale {version} --workers 0 would leave /predictions/{args.model} (default version {version}) without "
            f"workers; allowed for the default: 1..{MAX_WORKERS}"
        )
    api.call(
        "PUT", f"/models/{q(args.model)}/{q(version)}",
        {"min_worker": args.workers, "max_worker": args.workers, "synchronous": "true"},
        timeout=args.register_timeout,
    )
    print(f"{args.model} {version}: {args.workers} worker(s)")
    return 0


def cmd_unregister(api: Management, args, state: dict[str, Any]) -> int:
    entries = require_registered(api, args.model, args.version)
    default = api.default_version(args.model)
    if args.version == default:
        others = [str(e["modelVersion"]) for e in entries if str(e["modelVersion"]) != args.version]
        if others:
            raise CliError(
                f"version {args.version} is the default of {args.model!r}; make another version the default first "
                f"(set-default {others[-1]} or rollback); registered: {registered_names(entries)}"
            )
        if not args.force:
            raise CliError(
                f"version {args.version} is the only registered version of {args.model!r}; unregistering it takes "
                f"/predictions/{args.model} down. Pass --force to do it anyway"
            )
    api.call("DELETE", f"/models/{q(args.model)}/{q(args.version)}", timeout=args.register_timeout)
    history = state.get(args.model, {}).get("previous_defaults")
    if history is not None:
        state[args.model]["previous_defaults"] = [v for v in history if v != args.version]
        save_state(args.state_file, state)
    print(f"unregistered {args.model} {args.version}")
    return 0


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=None,
                        help="TorchServe config (default: $SERVE_CONFIG or config.properties in the repo root)")
    common.add_argument("--management-url", default=None,
                        help="management API, loopback only (default: management_address of the config)")
    common.add_argument("--key-file", type=Path, default=None,
                        help="key_file.json of the running server (default: the repo root's)")
    common.add_argument("--model-store", type=Path, default=None,
                        help="model store (default: model_store of the config, relative to the repo root)")
    common.add_argument("--model", default="watermark", help="model name (default: watermark)")
    common.add_argument("--state-file", type=Path, default=None,
                        help="history of defaults for rollback (default: logs/model_versions.json)")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds per API call (default 30)")
    common.add_argument("--register-timeout", type=float, default=300.0,
                        help="seconds for register/scale/unregister, which wait for workers (default 300)")

    parser = argparse.ArgumentParser(
        prog="scripts/manage_models.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Options go after the command, e.g.: scripts/manage_models.py list --key-file run/key_file.json",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", parents=[common], help="versions, default, workers")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("register", parents=[common], help="register an archive from the model store")
    p.add_argument("archive", help="file name of a .mar in the model store, e.g. watermark-v1.1.mar")
    p.add_argument("--workers", type=workers_arg, default=None, help="workers for the new version (default 1)")
    p.add_argument("--set-default", action="store_true", help="make it the default once its workers are up")
    p.set_defaults(func=cmd_register)
    p = sub.add_parser("set-default", parents=[common], help="make a registered version the default")
    p.add_argument("version", type=version_arg)
    p.set_defaults(func=cmd_set_default)
    p = sub.add_parser("rollback", parents=[common], help="make the previous default the default again")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("scale", parents=[common], help="set the number of workers of a version")
    p.add_argument("version", nargs="?", type=version_arg, default=None, help="default: the default version")
    p.add_argument("--workers", type=workers_arg, required=True, help=f"0..{MAX_WORKERS} (not 0 for the default)")
    p.set_defaults(func=cmd_scale)
    p = sub.add_parser("unregister", parents=[common], help="remove a version (not the default)")
    p.add_argument("version", type=version_arg)
    p.add_argument("--force", action="store_true", help="allow unregistering the only version")
    p.set_defaults(func=cmd_unregister)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config_path = args.config or Path(os.environ.get("SERVE_CONFIG") or REPO_ROOT / "config.properties")
        if not config_path.is_absolute():
            config_path = REPO_ROOT / config_path
        props = load_properties(config_path) if config_path.is_file() else {}
        if not props and (args.management_url is None or args.model_store is None):
            raise CliError(f"config {config_path} not found; pass --config, or --management-url and --model-store")
        url = args.management_url or props.get("management_address") or "http://127.0.0.1:8081"
        if args.model_store is not None:  # relative to the current directory, like any path argument
            args.model_store = args.model_store.resolve()
        else:  # relative to the repo root, where scripts/serve.sh starts TorchServe
            store = Path(props.get("model_store") or "model_store")
            args.model_store = store if store.is_absolute() else REPO_ROOT / store
        args.state_file = args.state_file or REPO_ROOT / "logs" / "model_versions.json"
        key_file = args.key_file or REPO_ROOT / "key_file.json"
        api = Management(url, read_key(key_file), args.timeout, key_file=key_file)
        return args.func(api, args, load_state(args.state_file))
    except CliError as exc:
        print(f"{PROG}: error: {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
