#!/usr/bin/env bash
# Entry point of the serving image: TorchServe in the foreground, the key keeper beside it.
#
# * torch threads follow the container's CPU limit (cgroup v2 cpu.max or v1 cfs quota),
#   not the node's core count, unless OMP_NUM_THREADS is set; the handler uses torch's
#   thread count when the archive sets no handler.threads;
# * SIGTERM/SIGINT run `torchserve --stop`, which stops the frontend and its workers;
#   the key keeper exits when TorchServe deletes key_file.json.
set -euo pipefail
cd /home/model-server

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

if [[ -z "${OMP_NUM_THREADS:-}" ]]; then
    limit="$(cpu_limit)"
    if [[ -n "$limit" ]]; then
        export OMP_NUM_THREADS="$limit"
    fi
fi
echo "container_entry: torch threads ${OMP_NUM_THREADS:-all cores (no CPU limit)}" >&2

torchserve --start --foreground --ts-config config.properties &
server=$!
python3 scripts/keykeeper.py --config config.properties --key-file key_file.json --listen 0.0.0.0:8083 &
# On SIGTERM: stop TorchServe (frontend and workers), wait for it, and exit 0 (a clean stop).
trap 'torchserve --stop; wait "$server" || true; exit 0' TERM INT
wait "$server"
