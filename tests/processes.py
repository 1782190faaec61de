"""Stopping the servers the tests start: each runs in a process group of its own
(``start_new_session=True``), and stopping means the whole group, workers included."""

from __future__ import annotations

import os
import signal
import subprocess
import time


def group_alive(proc: subprocess.Popen) -> bool:
    """Whether any process of ``proc``'s group is left."""
    proc.poll()  # reap the leader, or its zombie counts as alive
    found = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, timeout=10)
    return found.returncode == 0


def stop_group(proc: subprocess.Popen, term_seconds: float = 10.0, kill_seconds: float = 5.0) -> None:
    """SIGTERM the group, wait up to ``term_seconds``; then SIGKILL what is left and wait up
    to ``kill_seconds``. Reaps the leader."""
    for sig, pause in ((signal.SIGTERM, term_seconds), (signal.SIGKILL, kill_seconds)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + pause
        while group_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not group_alive(proc):
            break
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
