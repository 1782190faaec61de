#!/usr/bin/env bash
# Run the watermark detector locally with TorchServe and config.properties.
#
#   scripts/serve.sh start    start in the background, wait until /ping is healthy, print the key
#   scripts/serve.sh stop     stop it
#   scripts/serve.sh key [inference|management|API]   print a key from key_file.json
#   scripts/serve.sh status   is it up? (pid, /ping)
#   scripts/serve.sh rotate   issue a new inference key (old one stops working)
#
# TorchServe is always started from the repository root: that is where it writes
# key_file.json (its cwd), where `torchserve --stop` deletes it again, where logs/ go
# and what the relative model_store=model_store in config.properties resolves against.
# Token authorisation stays on: every call to :8080 (including /ping) and :8081 needs
# `Authorization: Bearer <key>`; a missing/wrong key gets HTTP 400 InvalidKeyException.
#
# Environment: SERVE_CONFIG (default config.properties), SERVE_MODEL (default watermark),
# SERVE_TIMEOUT seconds to wait for readiness (default 180), JAVA_HOME (as torchserve uses it).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# Idle OpenMP threads sleep instead of spinning: on a small CPU the Java frontend and the
# worker share the cores, and spinning threads took CPU from both (scripts/bench.py:
# TorchScript served 16 -> 18 images/s on 2 cores). Set it yourself to override.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

CONFIG="${SERVE_CONFIG:-config.properties}"
TIMEOUT="${SERVE_TIMEOUT:-180}"
MODEL="${SERVE_MODEL:-watermark}"
KEY_FILE="$REPO_ROOT/key_file.json"
LOG_DIR="$REPO_ROOT/logs"
OUT_FILE="$LOG_DIR/torchserve.out"

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

die() {
    echo "serve.sh: error: $*" >&2
    exit 1
}

if [[ -x "$REPO_ROOT/.venv/bin/torchserve" ]]; then
    TORCHSERVE="$REPO_ROOT/.venv/bin/torchserve"
    PYTHON="$REPO_ROOT/.venv/bin/python"
else
    TORCHSERVE="$(command -v torchserve || true)"
    PYTHON="$(command -v python3 || command -v python || true)"
fi

prop() {  # value of a key in the config file (single-line keys only)
    sed -n "s/^[[:space:]]*$1[[:space:]]*=[[:space:]]*//p" "$CONFIG" | tail -n 1
}

inference_url() { local v; v="$(prop inference_address)"; echo "${v:-http://127.0.0.1:8080}"; }
management_url() { local v; v="$(prop management_address)"; echo "${v:-http://127.0.0.1:8081}"; }

read_key() {  # read_key inference|management|API
    [[ -f "$KEY_FILE" ]] || return 1
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["key"])' "$KEY_FILE" "$1"
}

http_code() {  # http_code URL KEY [curl args...]
    local url="$1" key="$2"
    shift 2
    curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 -H "Authorization: Bearer $key" "$@" "$url" || true
}

check_java() {
    local java="java"
    [[ -n "${JAVA_HOME:-}" ]] && java="$JAVA_HOME/bin/java"
    command -v "$java" >/dev/null 2>&1 \
        || die "Java not found ($java). TorchServe needs Java >= 11, e.g. apt-get install openjdk-17-jre-headless, or set JAVA_HOME"
    local version major
    version="$("$java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -n 1)"
    major="${version%%.*}"
    [[ "$major" == "1" ]] && major="$(echo "$version" | cut -d. -f2)"
    [[ "$major" =~ ^[0-9]+$ && "$major" -ge 11 ]] \
        || die "Java ${version:-of unknown version} found at $java; TorchServe 0.12 needs Java >= 11"
}

is_healthy() {
    local key
    key="$(read_key inference 2>/dev/null)" || return 1
    [[ "$(http_code "$(inference_url)/ping" "$key")" == "200" ]]
}

model_ready() {  # a worker of the model is READY (management API; /ping turns 200 earlier)
    local key body
    key="$(read_key management 2>/dev/null)" || return 1
    body="$(curl -s --noproxy '*' --max-time 5 -H "Authorization: Bearer $key" "$(management_url)/models/$MODEL" || true)"
    [[ "$body" == *'"status": "READY"'* ]]
}

cmd_start() {
    [[ -n "$TORCHSERVE" ]] || die "torchserve not found in .venv/bin or on PATH (pip install torchserve==0.12.0)"
    command -v curl >/dev/null 2>&1 || die "curl is needed for the readiness check"
    check_java
    [[ -f "$CONFIG" ]] || die "config file '$CONFIG' not found"
    "$PYTHON" -c 'import yaml' 2>/dev/null || die "PyYAML is missing in $PYTHON (TorchServe needs it at run time)"
    local store mar
    store="$(prop model_store)"
    mar="$(prop load_models)"
    if [[ -n "$mar" && "$mar" != "all" && "$mar" != "ALL" && ! -f "${store:-model_store}/$mar" ]]; then
        die "'${store:-model_store}/$mar' not found; build it with scripts/create_mar.sh"
    fi
    local metrics_config
    metrics_config="$(prop metrics_config)"
    if [[ -n "$metrics_config" && ! -f "$metrics_config" ]]; then
        die "metrics_config '$metrics_config' (from $CONFIG) not found; it declares the Prometheus metrics (see metrics.yaml)"
    fi
    if is_healthy; then
        echo "TorchServe is already running ($(inference_url)); use: scripts/serve.sh stop"
        return 0
    fi

    mkdir -p "$LOG_DIR"
    echo "Starting TorchServe (config $CONFIG, output $OUT_FILE) ..."
    # The launcher spawns the Java frontend and returns; it would otherwise keep our pipes.
    nohup "$TORCHSERVE" --start --ts-config "$CONFIG" >"$OUT_FILE" 2>&1 </dev/null &
    local launcher=$!
    local deadline=$((SECONDS + TIMEOUT))
    while ((SECONDS < deadline)); do
        if is_healthy && model_ready; then
            local key
            key="$(read_key inference)"
            echo "TorchServe is up: $(inference_url)"
            echo "Inference key (from $KEY_FILE, changes on every start): $key"
            echo "Try:"
            echo "  curl -H \"Authorization: Bearer $key\" -T photo.jpg $(inference_url)/predictions/$MODEL"
            return 0
        fi
        if [[ -n "$launcher" ]] && ! kill -0 "$launcher" 2>/dev/null; then
            wait "$launcher" || {
                tail -n 20 "$OUT_FILE" >&2
                die "torchserve --start failed (see $OUT_FILE)"
            }
            launcher=""  # the launcher exited normally; the Java frontend runs on
        fi
        if grep -q -e "TorchServe is already running" -e "Address already in use" "$OUT_FILE" 2>/dev/null; then
            tail -n 20 "$OUT_FILE" >&2
            die "could not start (another TorchServe runs, or a port is taken); see $OUT_FILE"
        fi
        sleep 1
    done
    tail -n 30 "$OUT_FILE" >&2
    die "not healthy after ${TIMEOUT}s (see $OUT_FILE and $LOG_DIR/model_log.log); stop it with scripts/serve.sh stop"
}

cmd_stop() {
    [[ -n "$TORCHSERVE" ]] || die "torchserve not found"
    # Run from the repo root: --stop also deletes ./key_file.json.
    "$TORCHSERVE" --stop
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && curl -s -o /dev/null --max-time 2 "$(inference_url)/ping"; do
        sleep 1
    done
}

cmd_key() {
    local which="${1:-inference}"
    case "$which" in inference | management | API) ;; *) die "key: use inference, management or API" ;; esac
    read_key "$which" || die "no key in $KEY_FILE; is TorchServe running? (scripts/serve.sh start)"
}

cmd_status() {
    local pid_file="${TMPDIR:-/tmp}/.model_server.pid"
    if [[ -f "$pid_file" ]]; then echo "pid file: $pid_file ($(cat "$pid_file"))"; fi
    if is_healthy; then
        echo "healthy: $(inference_url)/ping answered 200"
    else
        echo "not healthy: $(inference_url)/ping did not answer 200 (or no key_file.json in $REPO_ROOT)"
        return 1
    fi
}

cmd_rotate() {
    local api
    api="$(read_key API)" || die "no key in $KEY_FILE; is TorchServe running?"
    local code
    code="$(http_code "$(management_url)/token?type=inference" "$api" -X POST)"
    [[ "$code" == "200" ]] || die "rotation failed (HTTP $code)"
    echo "New inference key: $(read_key inference)"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    key) cmd_key "${2:-inference}" ;;
    status) cmd_status ;;
    rotate) cmd_rotate ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
