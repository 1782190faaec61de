#!/usr/bin/env bash
# Entry point of the serving image: TorchServe in the foreground, the key keeper beside it.
#
# * torch threads follow the container's CPU limit (cgroup v2 cpu.max or v1 cfs quota),
#   not the node's core count, unless OMP_NUM_THREADS is set; the handler uses torch's
#   thread count when the archive sets no handler.threads;
# * the model store is MODEL_STORE (default: the archive baked into the image); mount a
#   store there, or point it at KServe's /mnt/models, to serve another version;
# * TOKEN_AUTH=on (default) keeps TorchServe's per-start random keys (read them with
#   `podman exec ... cat key_file.json`); TOKEN_AUTH=off is for a cluster whose gateway
#   authenticates callers (replicas cannot share TorchServe's random keys): TorchServe
#   runs with --disable-token-auth and its management API listens on 127.0.0.1 only
#   (reach it with kubectl exec / port-forward);
# * SIGTERM/SIGINT drain first: the keeper's /ready turns 503 (so no new traffic is routed
#   here), then the entry waits DRAIN_MIN_S (default 0; give Kubernetes endpoints time to
#   update) and until no connection to the inference port is left, at most DRAIN_TIMEOUT_S
#   (default 8, under podman's and docker's 10 s stop timeout; an idle keep-alive client
#   holds its connection until then); then `torchserve --stop` stops the frontend and its
#   workers, the key keeper exits when TorchServe deletes key_file.json, and the exit
#   status is 0.
set -euo pipefail
cd /home/model-server

MODEL_STORE="${MODEL_STORE:-/home/model-server/model-store}"
INFERENCE_PORT=8080
DRAIN_MIN_S="${DRAIN_MIN_S:-0}"
DRAIN_TIMEOUT_S="${DRAIN_TIMEOUT_S:-8}"
TOKEN_AUTH="${TOKEN_AUTH:-on}"
CONFIG=config.properties

die() { echo "container_entry: error: $*" >&2; exit 2; }

[[ "$DRAIN_MIN_S" =~ ^[0-9]+$ ]] || die "DRAIN_MIN_S='$DRAIN_MIN_S': expected whole seconds"
[[ "$DRAIN_TIMEOUT_S" =~ ^[0-9]+$ ]] || die "DRAIN_TIMEOUT_S='$DRAIN_TIMEOUT_S': expected whole seconds"
[[ "$TOKEN_AUTH" == "on" || "$TOKEN_AUTH" == "off" ]] || die "TOKEN_AUTH='$TOKEN_AUTH': expected on or off"
[[ -f "$MODEL_STORE/watermark.mar" ]] \
    || die "MODEL_STORE=$MODEL_STORE has no watermark.mar; mount a model store holding it there"

cpu_limit() {  # whole CPUs of the container's quota, empty when unlimited
    local quota period
    if [[ -r /sys/fs/cgroup/cpu.max ]]; then
        read -r quota period < /sys/fs/cgroup/cpu.max
    elif [[ -r /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]]; then
        quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us)
        period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)
    else
        return 0
    fi
    [[ "$quota" == "max" || "$quota" == "-1" || -z "$quota" ]] && return 0
    echo $(( (quota + period - 1) / period ))
}

connections() {  # established TCP connections to the inference port in this network namespace
    awk -v port="$(printf '%04X' "$INFERENCE_PORT")" \
        'FNR > 1 && $4 == "01" { split($2, local_addr, ":"); if (local_addr[2] == port) n++ } END { print n + 0 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null || echo 0
}

drain() {
    local started=$SECONDS left
    kill -USR1 "$keeper" 2>/dev/null || true
    sleep "$DRAIN_MIN_S"
    while left=$(connections); [[ "$left" -gt 0 ]] && (( SECONDS - started < DRAIN_TIMEOUT_S )); do
        sleep 0.2
    done
    echo "container_entry: drained in $((SECONDS - started)) s ($left connections left)" >&2
}

if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    limit="$(cpu_limit)"
    if [[ -n "$limit" ]]; then
        export OMP_NUM_THREADS="$limit"
    fi
fi
echo "container_entry: torch threads ${OMP_NUM_THREADS:-all cores (no CPU limit)}, model store $MODEL_STORE" >&2

server_args=()
keeper_args=(--key-file key_file.json)
if [[ "$TOKEN_AUTH" == "off" ]]; then
    CONFIG=config.runtime.properties
    sed 's#^management_address=.*#management_address=http://127.0.0.1:8081#' config.properties >"$CONFIG"
    grep -q '^management_address=http://127\.0\.0\.1:8081$' "$CONFIG" || die "could not move the management API to loopback"
    server_args=(--disable-token-auth)
    keeper_args=(--no-auth)
    echo "container_entry: TOKEN_AUTH=off: no keys; callers must be authenticated by the gateway;" \
         "management API on 127.0.0.1 only" >&2
fi

torchserve --start --foreground --ts-config "$CONFIG" --model-store "$MODEL_STORE" "${server_args[@]}" &
server=$!
python3 scripts/keykeeper.py --config "$CONFIG" "${keeper_args[@]}" --listen 0.0.0.0:8083 &
keeper=$!
trap 'drain; torchserve --stop; wait "$server" || true; kill "$keeper" 2>/dev/null || true; exit 0' TERM INT
wait "$server"
