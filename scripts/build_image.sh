#!/usr/bin/env bash
# Build the serving image (Dockerfile) with podman, with no image pulled from a registry.
#
#   scripts/build_image.sh [--tag NAME] [--mar FILE]
#       --tag   default localhost/watermark-serve:latest
#       --mar   the archive baked in (default model_store/watermark.mar)
#
# 1. the base: localhost/watermark-base:bookworm, made once with debootstrap (Debian
#    bookworm, minbase) and `podman import` (skipped when it exists, or with BASE_IMAGE=...);
# 2. the serving wheels: `pip download -r requirements-serve.txt` on this host into
#    build/wheels (the host's own pip settings apply; nothing is installed from the network
#    inside the build);
# 3. the archive, copied to build/image/watermark.mar (the only place the build reads it);
# 4. `podman build` under a temporary tag, which is renamed to the real tag only when the
#    build succeeded: a failed build never leaves a half-built image under the real name.
# Needs the archive (make demo, make train-real or scripts/create_mar.sh),
# podman, runc and debootstrap (installed with apt-get when missing and running as root),
# and about 15 GB of free disk (12 GB once build/wheels holds the wheels). PODMAN_GLOBAL
# and PODMAN_LIMITS hold the flags this machine's nested containers need (see README
# "Container"); set them empty elsewhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAG="localhost/watermark-serve:latest"
MAR=model_store/watermark.mar
BASE_IMAGE="${BASE_IMAGE:-localhost/watermark-base:bookworm}"
PODMAN_GLOBAL="${PODMAN_GLOBAL---cgroup-manager=cgroupfs --runtime runc}"
PODMAN_LIMITS="${PODMAN_LIMITS---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}"
BUILD_GB=12
WHEELS_GB=3
WHEELS=build/wheels
PYTHON=.venv/bin/python
[[ -x "$PYTHON" ]] || PYTHON=python3

die() { echo "build_image.sh: error: $*" >&2; exit 1; }
say() { echo "build_image.sh: $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        --mar) [[ $# -ge 2 ]] || die "--mar needs a value"; MAR="$2"; shift 2 ;;
        -h | --help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ "$TAG" =~ ^[a-z0-9./_:-]+$ ]] || die "--tag '$TAG': use lower-case letters, digits and . / _ : -"

ensure_tools() {
    local missing=()
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    command -v runc >/dev/null 2>&1 || missing+=(runc)
    if [[ "$BASE_IMAGE" == "localhost/watermark-base:bookworm" ]]; then
        command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    fi
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        say "installing ${missing[*]} with apt-get"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    else
        die "missing: ${missing[*]}; install them (Debian: apt-get install ${missing[*]})"
    fi
}

check_disk() {
    # Measured with an empty image store (2026-11-29): the build peaks at 12 GB while the
    # 1.6 GB torch layer is committed; the wheels take 3 GB more when not yet downloaded.
    local free_gb need_gb=$BUILD_GB
    compgen -G "$WHEELS/torch-*.whl" >/dev/null || need_gb=$((BUILD_GB + WHEELS_GB))
    # The image store's disk; on a machine where podman was just installed the store does
    # not exist yet, so the nearest existing folder above it stands for it.
    local store=/var/lib/containers
    while [[ ! -d "$store" ]]; do store=$(dirname "$store"); done
    free_gb=$(df -Pk "$store" | awk 'NR==2 {print int($4 / 1048576)}')
    [[ "$free_gb" -ge "$need_gb" ]] \
        || die "only ${free_gb} GB free for images; the build needs about ${need_gb} GB (${BUILD_GB} GB for the build, ${WHEELS_GB} GB for wheels not yet in $WHEELS)"
}

make_base() {
    # shellcheck disable=SC2086
    if podman $PODMAN_GLOBAL image exists "$BASE_IMAGE"; then
        say "base $BASE_IMAGE exists"
        return 0
    fi
    [[ "$BASE_IMAGE" == "localhost/watermark-base:bookworm" ]] \
        || die "base image $BASE_IMAGE not found; pull or build it first"
    local root
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    say "making the base with debootstrap (Debian bookworm, minbase; ~40 s)"
    debootstrap --variant=minbase bookworm "$root/rootfs" >"$root/debootstrap.log" 2>&1 \
        || { tail -n 5 "$root/debootstrap.log" >&2; die "debootstrap failed (see above)"; }
    # shellcheck disable=SC2086
    tar -C "$root/rootfs" -c . | podman $PODMAN_GLOBAL import - "$BASE_IMAGE" >/dev/null \
        || die "podman import of the base failed"
}

download_wheels() {
    mkdir -p "$WHEELS"
    cp requirements-serve.txt scripts/install_wheels.sh "$WHEELS/"
    say "downloading the serving wheels into $WHEELS (requirements-serve.txt)"
    local log="$WHEELS/pip-download.log"
    if ! "$PYTHON" -m pip download --quiet --disable-pip-version-check -r requirements-serve.txt -d "$WHEELS" \
            >"$log" 2>&1; then
        grep -v "^WARNING: Location 'file:" "$log" >&2 || true
        die "pip download -r requirements-serve.txt failed (see above)"
    fi
}

[[ -f "$MAR" ]] || die "$MAR not found; build it first (make demo, make train-real or scripts/create_mar.sh)"
"$PYTHON" -c 'import sys, zipfile; sys.exit("MAR-INF/MANIFEST.json" not in zipfile.ZipFile(sys.argv[1]).namelist())' "$MAR" 2>/dev/null \
    || die "$MAR is not a TorchServe archive (no MAR-INF/MANIFEST.json inside)"
ensure_tools
check_disk
make_base
download_wheels
mkdir -p build/image
cp "$MAR" build/image/watermark.mar.tmp && mv build/image/watermark.mar.tmp build/image/watermark.mar
say "archive $MAR ($(( $(stat -c %s "$MAR") / 1000000 )) MB) staged as build/image/watermark.mar"

building="${TAG%%:*}:building-$$"
say "building $TAG (temporary tag $building)"
started=$SECONDS
# shellcheck disable=SC2086
if ! podman $PODMAN_GLOBAL build $PODMAN_LIMITS --network host --format docker \
        --build-arg BASE_IMAGE="$BASE_IMAGE" -t "$building" -f Dockerfile .; then
    # shellcheck disable=SC2086
    podman $PODMAN_GLOBAL rmi -f "$building" >/dev/null 2>&1 || true
    die "podman build failed (see above); $TAG was left as it was"
fi
# shellcheck disable=SC2086
podman $PODMAN_GLOBAL tag "$building" "$TAG" && podman $PODMAN_GLOBAL untag "$building" "$building"
# shellcheck disable=SC2086
size=$(podman $PODMAN_GLOBAL image inspect "$TAG" --format '{{.Size}}')
say "built $TAG in $((SECONDS - started)) s, $((size / 1000000)) MB"
