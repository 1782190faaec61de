#!/usr/bin/env bash
# CI's container step (make image-ci; .ci/run runs it after the suite): build the serving
# image around an archive of an *untrained* Inception V3 of the shipped architecture (a
# fresh clone has no trained model), then run scripts/image_test.sh against it.
#
#   scripts/image_ci.sh [--tag NAME]      default tag: localhost/watermark-serve:ci
#
# Everything it makes lives in build/ci (export folder and archive) and under the CI tag;
# model_store/ and the image tagged latest are left alone. The image test checks the
# plumbing (verdicts, a bad body, metrics, the same probability as in-process, UID, a
# drained SIGTERM), not the quality of a model: the verdicts of an untrained model mean
# nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TAG="localhost/watermark-serve:ci"
OUT=build/ci
PYTHON=.venv/bin/python

die() { echo "image_ci.sh: error: $*" >&2; exit 1; }
say() { echo "image_ci.sh: $*"; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; TAG="$2"; shift 2 ;;
        -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[[ -x "$PYTHON" ]] || die "$PYTHON not found; run make venv first"

started=$SECONDS
rm -rf "$OUT/export"
mkdir -p "$OUT"
say "exporting an untrained Inception V3 (shipped architecture and preprocessing) to $OUT/export"
"$PYTHON" -W ignore - "$OUT/export" <<'PY'
import sys
from pathlib import Path
import torch
from handler.preprocess import PreprocessSpec
from train.export import export_model
from train.model import WatermarkNet

torch.manual_seed(0)
export_model(WatermarkNet(), PreprocessSpec(), {"threshold": 0.5, "rule": "manual"}, Path(sys.argv[1]),
             info={"model_name": "watermark", "weights": "untrained (CI image test)"})
PY
scripts/create_mar.sh --export-dir "$OUT/export" --model-store "$OUT" --version 0.1 --force
scripts/build_image.sh --mar "$OUT/watermark.mar" --tag "$TAG"
scripts/image_test.sh --tag "$TAG"
say "image built and tested in $((SECONDS - started)) s"
