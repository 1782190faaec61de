#!/usr/bin/env bash
# Start the serving image on loopback ports and check what it answers, then stop it.
#
#   scripts/image_test.sh [--tag NAME]      default tag: localhost/watermark-serve:latest
#
# Checks, first with TOKEN_AUTH=off: a verdict without a key, and no management API from
# outside. Then with the default (keys on): the keyless probe turns ready; real photos
# (demo_data/test, else generated ones) get verdicts through `curl -T` with the key handed
# over on stdin; a bad body sent among them gets its own 4xx; /metrics has the handler's
# counters; one photo's probability equals what this checkout's preprocessing and the
# image's own archive (copied out of the container) give in-process, and what a local
# TorchServe answers when one runs the same archive; the container runs as UID 10001;
# SIGTERM sent while 12 large photos are in flight drains them (/ready turns 503, every
# one gets its verdict) and the exit status is 0. Prints the time to ready and to the
# first verdict. PODMAN_GLOBAL / PODMAN_LIMITS as in scripts/build_image.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAG="localhost/watermark-serve:latest"
PODMAN_GLOBAL="${PODMAN_GLOBAL---cgroup-manager=cgroupfs --runtime runc}"
PODMAN_LIMITS="${PODMAN_LIMITS---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}"
PYTHON=.venv/bin/python
[[ -x "$PYTHON" ]] || PYTHON=python3
NAME="watermark-image-test-$$"

die() { echo "image_test.sh: error: $*" >&2; exit 1; }
say() { echo "image_test.sh: $*"; }
pod() { podman $PODMAN_GLOBAL "$@"; }  # shellcheck disable=SC2086

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        -h | --help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
command -v podman >/dev/null 2>&1 || die "podman not found; run make image first (it installs it)"
pod image exists "$TAG" || die "image $TAG not found; build it with make image"

work=$(mktemp -d)
# One name per call: this podman's `rm -f A B` with B already gone exits 0 and leaves A behind.
cleanup() {
    local name
    for name in "$NAME" "$NAME-noauth"; do pod rm -f "$name" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

read -r P_INF P_MGT P_MET P_HEALTH < <("$PYTHON" - <<'PY'
import socket
ports = []
sockets = [socket.socket() for _ in range(4)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
    ports.append(s.getsockname()[1])
for s in sockets:
    s.close()
print(*ports)
PY
)
# start NAME [podman run options...]: run the image on the loopback ports, wait for /ready
start() {
    local name=$1 code=""
    shift
    started=$(date +%s.%N)
    # --no-healthcheck: podman would schedule the image's HEALTHCHECK through systemd
    # timers, which this machine lacks; the same probe is checked here directly.
    # shellcheck disable=SC2086
    pod run -d --name "$name" --no-healthcheck $PODMAN_LIMITS "$@" \
        -p "127.0.0.1:$P_INF:8080" -p "127.0.0.1:$P_MGT:8081" -p "127.0.0.1:$P_MET:8082" -p "127.0.0.1:$P_HEALTH:8083" \
        "$TAG" >/dev/null || die "podman run failed (a port in use? see above)"
    for _ in $(seq 180); do
        code=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$P_HEALTH/ready" || true)
        [[ "$code" == "200" ]] && break
        pod container exists "$name" && [[ "$(pod inspect -f '{{.State.Running}}' "$name")" == "true" ]] \
            || { pod logs "$name" 2>&1 | tail -n 20 >&2; die "the container stopped (logs above)"; }
        sleep 1
    done
    [[ "$code" == "200" ]] || { pod logs "$name" 2>&1 | tail -n 20 >&2; die "not ready after 180 s (logs above)"; }
}
elapsed() { echo "$(date +%s.%N) $started" | awk '{printf "%.1f", $1 - $2}'; }

# TOKEN_AUTH=off (behind a gateway): a verdict without a key, no management API outside.
say "starting $TAG with TOKEN_AUTH=off as $NAME-noauth"
start "$NAME-noauth" -e TOKEN_AUTH=off
"$PYTHON" - "$work/noauth.jpg" <<'PY'
import sys
from PIL import Image
Image.new("RGB", (320, 240), (200, 180, 160)).save(sys.argv[1], quality=90)
PY
answer=$(curl -s --noproxy '*' --max-time 60 -T "$work/noauth.jpg" "http://127.0.0.1:$P_INF/predictions/watermark")
echo "$answer" | grep -q '"probability"' || die "TOKEN_AUTH=off: no verdict without a key: $answer"
mgt=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$P_MGT/models" || true)
[[ "$mgt" == "000" ]] || die "TOKEN_AUTH=off: the management API answers from outside the container (HTTP $mgt)"
pod stop -t 30 "$NAME-noauth" >/dev/null
pod rm -f "$NAME-noauth" >/dev/null
say "TOKEN_AUTH=off: checked in $(elapsed) s: a verdict without a key, management API not reachable from outside"

say "starting $TAG as $NAME on 127.0.0.1:$P_INF (inference), :$P_MGT, :$P_MET, :$P_HEALTH (probes)"
start "$NAME" -e DRAIN_TIMEOUT_S=25
say "ready after $(elapsed) s (keyless probe http://127.0.0.1:$P_HEALTH/ready)"
[[ "$(pod exec "$NAME" id -u)" == "10001" ]] || die "the container does not run as UID 10001"
pod exec "$NAME" cat /home/model-server/key_file.json >"$work/keys.json"
KEY=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$work/keys.json")

photos=()
while IFS= read -r -d '' f; do photos+=("$f"); done < <(find demo_data/test -name '*.jpg' -print0 2>/dev/null | sort -z | head -z -n 4)
if [[ ${#photos[@]} -eq 0 ]]; then
    "$PYTHON" - "$work" <<'PY'
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(4):
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(f"{sys.argv[1]}/photo{i}.jpg", quality=90)
PY
    photos=("$work"/photo*.jpg)
fi
printf 'this is not an image\n' >"$work/bad.jpg"

ask() {  # ask FILE -> JSON answer of the container, key on stdin
    printf 'Authorization: Bearer %s\n' "$KEY" \
        | curl -s --noproxy '*' --max-time 120 -H @- -T "$1" "http://127.0.0.1:$P_INF/predictions/watermark"
}
first=$(ask "${photos[0]}")
say "first verdict after $(elapsed) s: $(echo "$first" | tr -d '\n ')"
for f in "${photos[@]}" "$work/bad.jpg"; do ask "$f" >"$work/$(basename "$f").json" & done
wait
for f in "${photos[@]}"; do
    grep -q '"probability"' "$work/$(basename "$f").json" || die "no verdict for $f: $(cat "$work/$(basename "$f").json")"
done
grep -q '"status": 400' "$work/bad.jpg.json" || die "the bad body did not get its own 400: $(cat "$work/bad.jpg.json")"
say "${#photos[@]} verdicts and one 400 for the bad body, sent at once"
curl -s --noproxy '*' "http://127.0.0.1:$P_MET/metrics" | grep -q '^watermark_verdicts_total' \
    || die "/metrics has no watermark_verdicts_total"

pod cp "$NAME:/home/model-server/model-store/watermark.mar" "$work/image.mar" \
    || die "cannot copy the archive out of the container"
"$PYTHON" -W ignore::FutureWarning - "$work/image.mar" "${photos[0]}" "$first" <<'PY' || die "the container's probability differs from the local one"
import io, json, sys, tempfile, zipfile
import torch
from handler.preprocess import PreprocessSpec, bytes_to_tensor, sigmoid
from train.export import load_pt2, onnx_runner
with zipfile.ZipFile(sys.argv[1]) as mar:  # whichever model file the archive serves
    spec = PreprocessSpec.from_dict(json.loads(mar.read("preprocess.json")))
    name = json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["serializedFile"]
    blob = mar.read(name)
if name.endswith(".onnx"):
    model = onnx_runner(blob, torch.get_num_threads())
elif name.endswith(".pt2"):
    package = tempfile.NamedTemporaryFile(suffix=".pt2")
    package.write(blob)
    package.flush()
    model = load_pt2(package.name)
else:
    model = torch.jit.load(io.BytesIO(blob), map_location="cpu").eval()
data = open(sys.argv[2], "rb").read()
with torch.inference_mode():
    local = sigmoid(float(model(bytes_to_tensor(data, spec).unsqueeze(0)).reshape(-1)[0]))
served = json.loads(sys.argv[3])["probability"]
print(f"image_test.sh: probability in the container {served}, in-process here with the image's archive ({name}) {local:.6f}")
sys.exit(0 if abs(served - local) < 2e-5 else 1)
PY
if [[ -f key_file.json ]] && cmp -s "$work/image.mar" model_store/watermark.mar \
        && curl -s --noproxy '*' -o /dev/null --max-time 2 http://127.0.0.1:8083/ready; then
    local_answer=$(scripts/serve.sh header | curl -s --noproxy '*' -H @- -T "${photos[0]}" http://127.0.0.1:8080/predictions/watermark)
    say "the local TorchServe (same archive) answers: $(echo "$local_answer" | tr -d '\n ')"
    "$PYTHON" -c 'import json, sys; sys.exit(abs(json.loads(sys.argv[1])["probability"] - json.loads(sys.argv[2])["probability"]) > 2e-5)' \
        "$local_answer" "$first" || die "the local TorchServe answers another probability for ${photos[0]}"
fi

# SIGTERM under load: 12 large photos (4000 x 3000 JPEG) sent at once, SIGTERM while they
# are in flight; /ready must turn 503 at once and every one must still get its verdict (the
# entry point drains first).
"$PYTHON" - "${photos[0]}" "$work/large.jpg" <<'PY'
import sys
from PIL import Image
Image.open(sys.argv[1]).convert("RGB").resize((4000, 3000)).save(sys.argv[2], quality=90)
PY
for i in $(seq 12); do
    ( ask "$work/large.jpg" >"$work/inflight$i.json" || true; date +%s.%N >"$work/inflight$i.done" ) &
done
sleep 0.5
stop_started=$(date +%s.%N)
( pod stop -t 30 "$NAME" >/dev/null; date +%s.%N >"$work/stopped" ) &
sleep 0.5
ready_draining=$(curl -s --noproxy '*' -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$P_HEALTH/ready" || true)
wait
stopped=$(cat "$work/stopped")
answered=0
after=0
for i in $(seq 12); do
    grep -q '"probability"' "$work/inflight$i.json" && answered=$((answered + 1))
    awk -v done="$(cat "$work/inflight$i.done")" -v stop="$stop_started" 'BEGIN { exit !(done > stop) }' && after=$((after + 1))
done
status=$(pod inspect -f '{{.State.ExitCode}}' "$NAME")
say "SIGTERM with 12 large photos in flight: $answered of 12 answered ($after of them after SIGTERM); stopped in $(echo "$stopped $stop_started" | awk '{printf "%.1f", $1 - $2}') s, exit status $status"
pod logs "$NAME" 2>&1 | grep 'container_entry: drained' >&2 || true
[[ "$ready_draining" == "503" ]] || die "/ready answered '$ready_draining' while draining (expected 503)"
[[ "$answered" -eq 12 ]] || die "$((12 - answered)) requests in flight at SIGTERM got no verdict"
[[ "$after" -gt 0 ]] || say "warning: every request finished before SIGTERM; the drain was not exercised"
[[ "$status" == "0" ]] || die "exit status $status after SIGTERM (expected 0)"
say "all checks passed"
