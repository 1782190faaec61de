#!/usr/bin/env bash
# TorchServe's frontend is Java: require Java >= 11 and say how to get it.
set -euo pipefail
if ! command -v java >/dev/null 2>&1; then
  echo "error: java not found; TorchServe needs Java >= 11 (Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless)" >&2
  exit 1
fi
major=$(java -version 2>&1 | awk -F'"' '/version/ {print $2}' | awk -F. '{ if ($1 == 1) print $2; else print $1 }')
if [ -z "$major" ] || [ "$major" -lt 11 ]; then
  echo "error: java version ${major:-unknown} found; TorchServe needs Java >= 11 (apt-get install -y openjdk-17-jre-headless)" >&2
  exit 1
fi
