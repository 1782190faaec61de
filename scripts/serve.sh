#!/usr/bin/env bash
# Run the watermark detector locally with TorchServe and config.properties.
#
#   scripts/serve.sh start    start in the background, wait until a worker is READY, start the key keeper
#   scripts/serve.sh stop     stop it (and the key keeper)
#   scripts/serve.sh key [inference|management|API]   print a key from key_file.json
#   scripts/serve.sh header [inference|management]     print "Authorization: Bearer <key>" for curl -H @-
#   scripts/serve.sh status   is it up? (keyless probes of the key keeper, else /ping with the key)
#   scripts/serve.sh rotate [inference|management|all]  issue new keys now (default all; old ones stop working)
#
# TorchServe is started from SERVE_DIR (default: the repository root): that is where it
# writes key_file.json (its cwd), where `torchserve --stop` deletes it again, where logs/ go
# and what the relative model_store=model_store in config.properties resolves against.
# Token authorisation stays on: every call to :8080 (including /ping) and :8081 needs
# `Authorization: Bearer <key>`; a missing/wrong key gets HTTP 400 InvalidKeyException.
# The inference and management keys expire (token_expiration_min); scripts/keykeeper.py,
# started here, renews them before they do and answers keyless /live and /ready probes on
# SERVE_HEALTH. Keys never appear in process arguments: curl reads them from stdin.
#
# Environment: SERVE_CONFIG (default config.properties), SERVE_MODEL (default watermark),
# SERVE_DIR (default the repo root), SERVE_HEALTH (probes, default 127.0.0.1:8083; "off":
# no key keeper), SERVE_TIMEOUT seconds to wait for readiness (default 180), JAVA_HOME.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# Idle OpenMP threads sleep instead of spinning: on a small CPU the Java frontend and the
# worker share the cores, and spinning threads took CPU from both (scripts/bench.py:
# TorchScript served 16 -> 18 images/s on 2 cores). Set it yourself to override.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"

CONFIG="$(realpath -m "${SERVE_CONFIG:-config.properties}")"
TIMEOUT="${SERVE_TIMEOUT:-180}"
MODEL="${SERVE_MODEL:-watermark}"
RUN_DIR="$(realpath -m "${SERVE_DIR:-$REPO_ROOT}")"
HEALTH="${SERVE_HEALTH:-127.0.0.1:8083}"
KEY_FILE="$RUN_DIR/key_file.json"
LOG_DIR="$RUN_DIR/logs"
OUT_FILE="$LOG_DIR/torchserve.out"
KEEPER_PID="$LOG_DIR/keykeeper.pid"

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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

auth_header() {  # the header line for curl -H @- (printf is a shell builtin: no process sees the key)
    printf 'Authorization: Bearer %s\n' "$1"
}

http_code() {  # http_code URL KEY [curl args...]
    local url="$1" key="$2"
    shift 2
    auth_header "$key" | curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 -H @- "$@" "$url" || true
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
    body="$(auth_header "$key" | curl -s --noproxy '*' --max-time 5 -H @- "$(management_url)/models/$MODEL" || true)"
    [[ "$body" == *'"status": "READY"'* ]]
}

start_keeper() {  # renews the keys before they expire; keyless /live and /ready on $HEALTH
    [[ "$HEALTH" == "off" ]] && return 0
    stop_keeper
    nohup "$PYTHON" "$REPO_ROOT/scripts/keykeeper.py" --config "$CONFIG" --key-file "$KEY_FILE" \
        --listen "$HEALTH" --model "$MODEL" >>"$LOG_DIR/keykeeper.log" 2>&1 </dev/null &
    echo $! >"$KEEPER_PID"
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        [[ "$(probe ready)" == "200" ]] && return 0
        kill -0 "$(cat "$KEEPER_PID")" 2>/dev/null || break
        sleep 0.2
    done
    tail -n 5 "$LOG_DIR/keykeeper.log" >&2
    echo "serve.sh: warning: the key keeper did not answer on $HEALTH (see $LOG_DIR/keykeeper.log): keys will" \
        "not be renewed and there are no keyless probes; set SERVE_HEALTH=HOST:PORT, or off" >&2
}

stop_keeper() {
    [[ -f "$KEEPER_PID" ]] || return 0
    local pid
    pid="$(cat "$KEEPER_PID")"
    if kill -0 "$pid" 2>/dev/null && grep -q keykeeper "/proc/$pid/cmdline" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + 10))
        while ((SECONDS < deadline)) && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    fi
    rm -f "$KEEPER_PID"
}

probe() {  # probe live|ready -> HTTP code of the key keeper's keyless probe (000: not answering)
    [[ "$HEALTH" == "off" ]] && { echo "000"; return 0; }
    curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "http://$HEALTH/$1" || true
}

cmd_start() {
    [[ -n "$TORCHSERVE" ]] || die "torchserve not found in .venv/bin or on PATH (pip install torchserve==0.12.0)"
    command -v curl >/dev/null 2>&1 || die "curl is needed for the readiness check"
    check_java
    [[ -f "$CONFIG" ]] || die "config file '$CONFIG' not found"
    "$PYTHON" -c 'import yaml' 2>/dev/null || die "PyYAML is missing in $PYTHON (TorchServe needs it at run time)"
    mkdir -p "$RUN_DIR"
    cd "$RUN_DIR"  # relative paths of the config (model_store, metrics_config) resolve here
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
            start_keeper
            echo "TorchServe is up: $(inference_url)"
            echo "Keys: $KEY_FILE (new at every start; renewed before they expire by scripts/keykeeper.py)"
            [[ "$HEALTH" != "off" ]] && echo "Keyless probes: http://$HEALTH/live and http://$HEALTH/ready"
            echo "Try:"
            echo "  scripts/serve.sh header | curl -H @- -T photo.jpg $(inference_url)/predictions/$MODEL"
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
    mkdir -p "$RUN_DIR"
    cd "$RUN_DIR"  # --stop also deletes ./key_file.json
    "$TORCHSERVE" --stop
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)) && curl -s --noproxy '*' -o /dev/null --max-time 2 "$(inference_url)/ping"; do
        sleep 1
    done
    stop_keeper
}

cmd_key() {
    local which="${1:-inference}"
    case "$which" in inference | management | API) ;; *) die "key: use inference, management or API" ;; esac
    read_key "$which" || die "no key in $KEY_FILE; is TorchServe running? (scripts/serve.sh start)"
}

cmd_header() {
    local which="${1:-inference}"
    case "$which" in inference | management) ;; *) die "header: use inference or management" ;; esac
    auth_header "$(cmd_key "$which")"
}

cmd_status() {
    local pid_file="${TMPDIR:-/tmp}/.model_server.pid"
    if [[ -f "$pid_file" ]]; then echo "pid file: $pid_file ($(cat "$pid_file"))"; fi
    local code
    code="$(probe ready)"
    if [[ "$code" == "200" ]]; then
        echo "ready: http://$HEALTH/ready answered 200 (keyless probe of the key keeper)"
        return 0
    fi
    if is_healthy; then
        echo "healthy: $(inference_url)/ping answered 200, but the key keeper's probe answered ${code} (keys are not renewed; restart with scripts/serve.sh stop && scripts/serve.sh start)"
        return 1
    fi
    echo "not healthy: $(inference_url)/ping did not answer 200 (or no key_file.json in $RUN_DIR)"
    return 1
}

cmd_rotate() {
    local which="${1:-all}" api code kind
    case "$which" in inference | management) ;; all) which="inference management" ;;
        *) die "rotate: use inference, management or all" ;; esac
    api="$(read_key API)" || die "no key in $KEY_FILE; is TorchServe running?"
    for kind in $which; do
        code="$(http_code "$(management_url)/token?type=$kind" "$api" -X POST)"
        [[ "$code" == "200" ]] || die "renewing the $kind key failed (HTTP $code)"
        echo "New $kind key written to $KEY_FILE (the old one no longer works)"
    done
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    key) cmd_key "${2:-inference}" ;;
    header) cmd_header "${2:-inference}" ;;
    status) cmd_status ;;
    rotate) cmd_rotate "${2:-all}" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
