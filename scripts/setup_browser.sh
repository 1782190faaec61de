#!/usr/bin/env bash
# Install the browser the review page's test drives: Debian's chromium and chromium-driver
# (/usr/bin/chromium, /usr/bin/chromedriver). Idempotent: does nothing when both exist.
# Otherwise installs them with apt-get, as root or through sudo (non-interactive), and
# fails with a clear message when neither is possible. `make test` runs it first.
#
# Usage: scripts/setup_browser.sh [--check]   (--check: say what is missing, install nothing)
set -euo pipefail

PACKAGES=(chromium chromium-driver)
CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]]; then
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "missing: $([[ -x "$CHROMIUM" ]] || echo -n "$CHROMIUM ")$([[ -x "$CHROMEDRIVER" ]] || echo -n "$CHROMEDRIVER")"
  exit 1
fi
die() {
  echo "error: setup_browser.sh: $*" >&2
  exit 1
}
command -v apt-get >/dev/null 2>&1 \
  || die "no apt-get (not Debian/Ubuntu); install Chromium and its driver as $CHROMIUM and $CHROMEDRIVER"
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
echo "installing ${PACKAGES[*]} (the review page's browser test drives them)"
if ! "${SUDO[@]}" apt-get install -y "${PACKAGES[@]}" >"$log" 2>&1; then
  # Usually a fresh machine with empty package lists: refresh them once and retry.
  if ! { "${SUDO[@]}" apt-get update >>"$log" 2>&1 \
        && "${SUDO[@]}" apt-get install -y "${PACKAGES[@]}" >>"$log" 2>&1; }; then
    tail -n 15 "$log" >&2
    die "apt-get install ${PACKAGES[*]} failed (see above)"
  fi
fi
[[ -x "$CHROMIUM" && -x "$CHROMEDRIVER" ]] || die "installed ${PACKAGES[*]}, but $CHROMIUM or $CHROMEDRIVER is still missing"
echo "browser ready: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
