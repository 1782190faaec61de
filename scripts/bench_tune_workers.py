#!/usr/bin/env python
"""Tuning throughput with 1, 2, ... workers sharing one study: trials per hour.

For each worker count W it starts a fresh study (``bench-wW-<time>``) in the shared
``--storage`` (PostgreSQL) and W ``python -m train tune`` processes at once, each with its
own output folder and feature cache, as W machines would have; then prints a markdown
table (wall time, finished trials, trials per hour, how the trials were split) and writes
it to ``--out`` (atomically) when given. On one machine the workers share its cores, so
the figure says what the coordination costs, not what W machines gain.

Usage::

    .venv/bin/python scripts/bench_tune_workers.py --storage postgresql://USER@127.0.0.1:5432/optuna \\
        --data demo_data --n-trials 8 --workers 1 2 [--threads-per-worker 1] [--out bench/tune_workers.md] \\
        [-- extra tune flags]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.io import redact_url, write_bytes_atomic  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# What torch (and the BLAS under it) read at start for their thread pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def run_study(args: argparse.Namespace, workers: int, extra: list[str]) -> dict:
    import optuna

    name = f"bench-w{workers}-{time.strftime('%Y%m%d-%H%M%S')}"
    logs = Path(args.work) / name
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    started = time.monotonic()
    for i in range(workers):
        command = [
            sys.executable, "-m", "train", "tune", "--data", str(args.data), "--output", str(logs / f"worker{i}"),
            "--storage", args.storage, "--study-name", name, "--n-trials", str(args.n_trials), "--no-progress", *extra,
        ]  # fmt: skip
        if args.tracking_uri:
            command += ["--tracking-uri", args.tracking_uri]
        env = dict(os.environ)
        if args.threads_per_worker:
            env.update({name: str(args.threads_per_worker) for name in THREAD_VARIABLES})
        log = open(logs / f"worker{i}.log", "wb")  # noqa: SIM115 - closed below
        procs.append((subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    codes = []
    for proc, log in procs:
        codes.append(proc.wait())
        log.close()
    wall = time.monotonic() - started
    trials = optuna.load_study(study_name=name, storage=args.storage).trials
    states = Counter(t.state.name for t in trials)
    finished = states["COMPLETE"] + states["PRUNED"]
    split = sorted(Counter(t.user_attrs.get("worker", "?") for t in trials).values(), reverse=True)
    return {
        "workers": workers, "threads": args.threads_per_worker or "default", "study": name, "codes": codes, "wall": wall, "finished": finished, "complete": states["COMPLETE"],
        "pruned": states["PRUNED"], "failed": states["FAIL"], "per_hour": finished / wall * 3600, "split": split,
    }  # fmt: skip


def table(rows: list[dict], args: argparse.Namespace, extra: list[str]) -> str:
    lines = [
        f"Tuning throughput, {time.strftime('%Y-%m-%d')}: data {args.data}, {args.n_trials} trials per study, "
        f"storage {redact_url(args.storage)}, extra flags: {' '.join(extra) or 'none'}",
        "",
        "| workers | threads per worker | wall time | finished (complete + pruned) | failed | trials per hour | trials per worker | exit codes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['threads']} | {r['wall'] / 60:.1f} min | {r['finished']} ({r['complete']} + {r['pruned']}) | {r['failed']} "
            f"| {r['per_hour']:.1f} | {' / '.join(map(str, r['split']))} | {' '.join(map(str, r['codes']))} |"
        )
    if len(rows) > 1:
        base = rows[0]["per_hour"]
        lines += ["", "Throughput against the first row: " + ", ".join(f"{r['workers']} workers {r['per_hour'] / base:.2f}x" for r in rows)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="shared Optuna storage, e.g. postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or ~/.pgpass)")
    parser.add_argument("--tracking-uri", help="shared MLflow store (default: each worker's own embedded store)")
    parser.add_argument("--data", type=Path, default=REPO / "demo_data", help="dataset folder (default demo_data)")
    parser.add_argument("--n-trials", type=int, default=8, help="finished trials per study (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    parser.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench-tune", help="workers' output folders and logs")
    parser.add_argument(
        "--threads-per-worker", type=int,
        help="set OMP_NUM_THREADS / MKL_NUM_THREADS of each worker (default: torch's own choice, all cores per worker)",
    )
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder; build the demo dataset with: .venv/bin/python -m train demo-data demo_data")
    if any(w < 1 for w in args.workers) or args.n_trials < 1 or (args.threads_per_worker or 1) < 1:
        parser.error("--workers, --n-trials and --threads-per-worker must be >= 1")
    rows = []
    for workers in args.workers:
        row = run_study(args, workers, extra)
        print(f"{workers} worker(s): {row['finished']} trials in {row['wall'] / 60:.1f} min (study {row['study']})", flush=True)
        rows.append(row)
    text = table(rows, args, extra)
    print(text)
    if args.out:
        write_bytes_atomic(args.out, text.encode("utf-8"))
    return 0 if all(code == 0 for r in rows for code in r["codes"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
