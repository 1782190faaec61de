#!/usr/bin/env bash
# Install the Debian programs the suite drives for real, when any is missing:
#   chromium, chromium-driver  the review page's browser test (/usr/bin/chromium, /usr/bin/chromedriver)
#   postgresql                 the multi-worker tuning and MLflow-server tests start their own
#                              throw-away server from its binaries (/usr/lib/postgresql/*/bin)
# Idempotent: does nothing when all are there. Otherwise installs the missing packages with
# apt-get, as root or through sudo (non-interactive), and fails with a clear message when
# neither is possible. `make test` runs it first.
#
# Usage: scripts/setup_test_system.sh [--check]   (--check: say what is missing, install nothing)
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

postgres_bin() {
  local found
  found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [[ -n "$found" && -x "$found/initdb" && -x "$found/pg_ctl" ]] && echo "$found"
}

missing_packages() {
  [[ -x "$CHROMIUM" ]] || echo chromium
  [[ -x "$CHROMEDRIVER" ]] || echo chromium-driver
  postgres_bin >/dev/null || echo postgresql
}

mapfile -t PACKAGES < <(missing_packages)
if [[ ${#PACKAGES[@]} -eq 0 ]]; then
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "missing: ${PACKAGES[*]}"
  exit 1
fi
die() {
  echo "error: setup_test_system.sh: $*" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 \
  || die "no apt-get (not Debian/Ubuntu); install ${PACKAGES[*]} (Chromium as $CHROMIUM, its driver as $CHROMEDRIVER, PostgreSQL's initdb and pg_ctl)"
if [[ "$(id -u)" -eq 0 ]]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  die "not root and no password-less sudo; run: sudo apt-get install -y ${PACKAGES[*]}"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "installing ${PACKAGES[*]} (the browser and PostgreSQL tests drive them)"
if ! "${SUDO[@]}" apt-get install -y "${PACKAGES[@]}" >"$log" 2>&1; then
  # Usually a fresh machine with empty package lists: refresh them once and retry.
  if ! { "${SUDO[@]}" apt-get update >>"$log" 2>&1 \
        && "${SUDO[@]}" apt-get install -y "${PACKAGES[@]}" >>"$log" 2>&1; }; then
    tail -n 15 "$log" >&2
    die "apt-get install ${PACKAGES[*]} failed (see above)"
  fi
fi
mapfile -t STILL < <(missing_packages)
[[ ${#STILL[@]} -eq 0 ]] || die "installed ${PACKAGES[*]}, but ${STILL[*]} is still missing"
echo "test programs ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM"); PostgreSQL in $(postgres_bin)"
