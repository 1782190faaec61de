#!/bin/sh
# Used inside the image build (Dockerfile): install the wheels in /wheels whose file names
# match the given patterns, without their dependencies; a pattern with no match is skipped
# (a base without NVIDIA wheels, a torch that no longer needs one). The Dockerfile calls it
# once per layer, so that no single layer is large: committing a layer briefly takes several
# times its size on disk. build_image.sh stages this file into build/wheels with the wheels.
#
#   sh /wheels/install_wheels.sh 'nvidia_cudnn*' 'nvidia_nccl*'
set -eu
[ "$#" -gt 0 ] || { echo "install_wheels.sh: give one or more file-name patterns" >&2; exit 2; }
found=""
for pattern in "$@"; do
    for wheel in /wheels/$pattern.whl; do
        if [ -e "$wheel" ]; then found="$found $wheel"; fi
    done
done
[ -n "$found" ] || { echo "install_wheels.sh: no wheel matches $*; skipped"; exit 0; }
# shellcheck disable=SC2086
/opt/venv/bin/pip install --no-cache-dir --no-index --no-deps $found
