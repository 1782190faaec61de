#!/usr/bin/env bash
# Install the fonts the synthetic-watermark engine (train/synth/) draws with:
#   fonts-noto-core     Noto Sans/Serif (Latin) and Noto Naskh/Sans/Kufi Arabic (Persian)
#   fonts-farsiweb      Persian fonts common on Iranian shop banners (Nazli, Titr, Roya, ...)
#   fonts-dejavu-core   DejaVu (Latin + Arabic script, the symbols the icon fallback uses)
#   fonts-font-awesome  Font Awesome 4.7 glyphs (Instagram, Telegram, WhatsApp, phone, ...)
#
# Idempotent and silent when every package is already present. When not root, without
# apt-get, or when the install fails, it prints a warning and exits 0: the engine then
# falls back to the fonts it finds (at least matplotlib's DejaVu) and warns itself.
# `apt-get update` is run only when the install fails without it.
#
# Usage: scripts/setup_fonts.sh [--check]   (--check: list what is missing, install nothing)
set -uo pipefail

PACKAGES=(fonts-noto-core fonts-farsiweb fonts-dejavu-core fonts-font-awesome)
# One file per package, used when dpkg-query is not available.
declare -A MARKER=(
  [fonts-noto-core]=/usr/share/fonts/truetype/noto/NotoNaskhArabic-Regular.ttf
  [fonts-farsiweb]=/usr/share/fonts/truetype/farsiweb/nazli.ttf
  [fonts-dejavu-core]=/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
  [fonts-font-awesome]=/usr/share/fonts/truetype/font-awesome/fontawesome-webfont.ttf
)

warn() { echo "warning: setup_fonts.sh: $*; synthetic watermarks fall back to the fonts found" >&2; }

installed() {
  if command -v dpkg-query >/dev/null 2>&1; then
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ] && return 0
  fi
  [ -f "${MARKER[$1]}" ]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "${1:-}" = "--check" ]; then
  echo "missing font packages: ${missing[*]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  warn "not root, cannot install ${missing[*]} (run: sudo $0)"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  warn "no apt-get (not Debian/Ubuntu), cannot install ${missing[*]}"
  exit 0
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
echo "installing font packages: ${missing[*]}"
if ! apt-get install -y --no-install-recommends "${missing[@]}" >"$log" 2>&1; then
  # Usually a fresh container with empty package lists: refresh them once and retry.
  if ! { apt-get update >>"$log" 2>&1 && apt-get install -y --no-install-recommends "${missing[@]}" >>"$log" 2>&1; }; then
    tail -n 5 "$log" >&2
    warn "apt-get install ${missing[*]} failed"
    exit 0
  fi
fi
command -v fc-cache >/dev/null 2>&1 && fc-cache -f >/dev/null 2>&1
still=()
for pkg in "${missing[@]}"; do
  installed "$pkg" || still+=("$pkg")
done
if [ "${#still[@]}" -gt 0 ]; then
  warn "still missing after install: ${still[*]}"
  exit 0
fi
echo "font packages installed: ${missing[*]}"
exit 0
