#!/usr/bin/env bash
# Create or refresh the project virtualenv (.venv) idempotently.
# Re-installs only when requirements*.txt changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.requirements.sha256"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; install Python 3.11 (the pinned torch wheels are for 3.11)" >&2
  exit 1
fi
version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "$version" != "3.11" ]; then
  echo "warning: Python $version found; the pins are tested on Python 3.11" >&2
fi

want=$(cat requirements-serve.txt requirements.txt requirements-dev.txt requirements-deploy.txt | sha256sum | cut -d' ' -f1)
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "venv up to date: $VENV"
  exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
echo "installing pinned requirements into $VENV (first time: a few minutes, ~6 GB for torch)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt >"$log" 2>&1; then
  grep -v "^WARNING: Location 'file:" "$log" >&2 || true
  echo "error: dependency install failed (see above); fix and rerun this script" >&2
  exit 1
fi
# KServe's API models for scripts/validate_deploy.py, without the package's dependencies
# (see requirements-deploy.txt), in a folder of their own.
rm -rf "$VENV/kserve-sdk"
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
        --target "$VENV/kserve-sdk" -r requirements-deploy.txt >"$log" 2>&1; then
  grep -v "^WARNING: Location 'file:" "$log" >&2 || true
  echo "error: installing requirements-deploy.txt into $VENV/kserve-sdk failed (see above)" >&2
  exit 1
fi
echo "$want" > "$STAMP"
echo "venv ready: $VENV"
