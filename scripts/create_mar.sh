#!/usr/bin/env bash
# Bundle an exported watermark model into a TorchServe archive: MODEL_STORE/NAME.mar
# (or MODEL_STORE/NAME-vVERSION.mar with --versioned, or --archive-name FILE).
# The bundle comes from an export folder, or from the MLflow model registry
# (--from-registry models:/watermark@champion); then the archive's version is the
# registry version.
#
# The archive holds (flat, as TorchServe unpacks them into the model directory):
#   model.pt | model.onnx | model.int8.onnx | model.pt2
#                         the model in the --format chosen (--serialized-file)
#   watermark_handler.py  handler/watermark_handler.py (--handler)
#   preprocess.py         handler/preprocess.py, the one preprocessing definition
#   evidence.py           handler/evidence.py, the evidence map read onto the photo (/explanations)
#   preprocess.json       PreprocessSpec of the export
#   threshold.json        decision threshold on the sigmoid probability (--format onnx-int8:
#                         the bundle's threshold.int8.json, chosen on the int8 model's scores)
#   model_info.json       optional, copied when the export has one
#   model-config.yaml     generated here: workers, batching, timeouts, handler: section
#
# Values in model-config.yaml win over the `models=` JSON of config.properties in
# TorchServe 0.12 (ModelManager.createModel takes the archive's value when > 0), so the
# defaults below are kept equal to config.properties; change both together.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

EXPORT_DIR="artifacts/export"
VERSION="1.0"
MODEL_NAME="watermark"
MODEL_STORE="model_store"
FORCE=0
WORKERS=1
BATCH_SIZE=8
MAX_BATCH_DELAY=50
RESPONSE_TIMEOUT=120
MAX_PIXELS=""
DECODE_MEMORY_MB=""
ARCHIVE_NAME=""
VERSIONED=0
FROM_REGISTRY=""
FORMAT="torchscript"
THRESHOLD_FILE="threshold.json"
THREADS=""
TRACKING_URI=""
EXPORT_DIR_SET=0
VERSION_SET=0

usage() {
    cat <<'EOF'
Usage: scripts/create_mar.sh [options]

Bundle an exported watermark model into a TorchServe archive MODEL_STORE/NAME.mar.

Options:
  --export-dir DIR        export folder with model.pt, preprocess.json, threshold.json
                          and optionally model_info.json          (default: artifacts/export)
  --format F              torchscript (model.pt, default); onnx (model.onnx, onnxruntime;
                          add it with python -m train export-onnx); onnx-int8
                          (model.int8.onnx with threshold.int8.json, the fastest on a
                          CPU; python -m train export-int8); pt2 (model.pt2,
                          AOTInductor, CPU only; python -m train export-pt2)
  --threads N             intra-op threads per worker (handler.threads); default: unset,
                          the worker uses all cores (right for --workers 1); with
                          --workers W on C cores use C / W
  --from-registry URI     take the bundle from the MLflow model registry instead, e.g.
                          models:/watermark@champion or models:/watermark/3; the archive
                          version is then the registry version
  --tracking-uri URI      MLflow store of --from-registry (default: $MLFLOW_TRACKING_URI,
                          else sqlite:///artifacts/mlflow/mlflow.db under the current folder)
  --version V             model version, digits and dots, e.g. 1.0 or 2.3.1 (default: 1.0,
                          or the registry version with --from-registry)
  --model-name NAME       model name = URL path /predictions/NAME   (default: watermark)
  --model-store DIR       where NAME.mar is written                 (default: model_store)
  --archive-name FILE     archive file name without .mar, e.g. watermark-v1.1
                          (default: NAME; config.properties loads watermark.mar at start)
  --versioned             archive file name NAME-vVERSION.mar, e.g. watermark-v1.1.mar,
                          so versions sit side by side for scripts/manage_models.py register
  --force                 replace an existing archive of that file name
  --workers N             minWorkers = maxWorkers                   (default: 1)
  --batch-size N          server-side batch size                    (default: 8)
  --max-batch-delay MS    how long to wait to fill a batch          (default: 50)
  --response-timeout S    seconds before a worker is considered stuck (default: 120)
  --max-pixels N          handler.max_pixels (decompression-bomb guard);
                          default: unset, the handler uses preprocess.json's max_pixels
  --decode-memory-mb N    handler.decode_memory_mb: memory the images of one batch may
                          hold while they decode (default: unset, two images' budgets
                          of 4 bytes x max_pixels, 400 MB at 50 MP)
  -h, --help              show this help

Relative paths are taken from the current directory. The export folder is produced by
`make demo` or `python -m train export`. The archive is built in a temporary folder
inside MODEL_STORE and moved into place only when complete.
EOF
}

die() {
    echo "create_mar.sh: error: $*" >&2
    exit 1
}

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --export-dir) need_value "$@"; EXPORT_DIR="$2"; EXPORT_DIR_SET=1; shift 2 ;;
        --version) need_value "$@"; VERSION="$2"; VERSION_SET=1; shift 2 ;;
        --from-registry) need_value "$@"; FROM_REGISTRY="$2"; shift 2 ;;
        --format) need_value "$@"; FORMAT="$2"; shift 2 ;;
        --threads) need_value "$@"; THREADS="$2"; shift 2 ;;
        --tracking-uri) need_value "$@"; TRACKING_URI="$2"; shift 2 ;;
        --model-name) need_value "$@"; MODEL_NAME="$2"; shift 2 ;;
        --model-store) need_value "$@"; MODEL_STORE="$2"; shift 2 ;;
        --workers) need_value "$@"; WORKERS="$2"; shift 2 ;;
        --batch-size) need_value "$@"; BATCH_SIZE="$2"; shift 2 ;;
        --max-batch-delay) need_value "$@"; MAX_BATCH_DELAY="$2"; shift 2 ;;
        --response-timeout) need_value "$@"; RESPONSE_TIMEOUT="$2"; shift 2 ;;
        --max-pixels) need_value "$@"; MAX_PIXELS="$2"; shift 2 ;;
        --decode-memory-mb) need_value "$@"; DECODE_MEMORY_MB="$2"; shift 2 ;;
        --archive-name) need_value "$@"; ARCHIVE_NAME="$2"; shift 2 ;;
        --versioned) VERSIONED=1; shift ;;
        --force) FORCE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "create_mar.sh: error: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

if [[ -x "$REPO_ROOT/.venv/bin/torch-model-archiver" ]]; then
    ARCHIVER="$REPO_ROOT/.venv/bin/torch-model-archiver"
    PYTHON="$REPO_ROOT/.venv/bin/python"
elif command -v torch-model-archiver >/dev/null 2>&1; then
    ARCHIVER="$(command -v torch-model-archiver)"
    PYTHON="$(command -v python3 || command -v python)"
else
    die "torch-model-archiver not found in $REPO_ROOT/.venv/bin or on PATH (pip install torch-model-archiver==0.12.0)"
fi

WORK_DIR=""
REGISTRY_DIR=""
cleanup() { rm -rf "$WORK_DIR" "$REGISTRY_DIR"; }
trap cleanup EXIT

# ---------------------------------------------------------------- registry
if [[ -n "$FROM_REGISTRY" ]]; then
    [[ "$EXPORT_DIR_SET" -eq 0 ]] || die "--from-registry and --export-dir both name the bundle; pass only one"
    mkdir -p "$MODEL_STORE"
    REGISTRY_DIR="$(mktemp -d "$MODEL_STORE/.registry.XXXXXX")"
    fetch_args=(registry fetch --uri "$FROM_REGISTRY" --out "$REGISTRY_DIR/export" --print-version)
    [[ -n "$TRACKING_URI" ]] && fetch_args+=(--tracking-uri "$TRACKING_URI")
    REGISTRY_VERSION="$(PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m train "${fetch_args[@]}" | tail -n 1)" \
        || die "could not fetch $FROM_REGISTRY from the model registry (see above)"
    if [[ "$VERSION_SET" -eq 1 && "$VERSION" != "$REGISTRY_VERSION" ]]; then
        die "--version $VERSION differs from the registry version $REGISTRY_VERSION of $FROM_REGISTRY; drop --version"
    fi
    VERSION="$REGISTRY_VERSION"
    EXPORT_DIR="$REGISTRY_DIR/export"
    echo "Fetched $FROM_REGISTRY: registry version $VERSION"
fi

# ---------------------------------------------------------------- validation
[[ "$VERSION" =~ ^[0-9]+(\.[0-9]+){0,3}$ ]] \
    || die "invalid --version '$VERSION': use digits and dots, e.g. 1.0 or 2.3.1"
[[ "$MODEL_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] \
    || die "invalid --model-name '$MODEL_NAME': letters, digits, '_', '-', '.'; must start with a letter or digit"
for pair in "workers:$WORKERS" "batch-size:$BATCH_SIZE" "max-batch-delay:$MAX_BATCH_DELAY" \
    "response-timeout:$RESPONSE_TIMEOUT"; do
    [[ "${pair#*:}" =~ ^[1-9][0-9]{0,6}$ ]] || die "invalid --${pair%%:*} '${pair#*:}': must be a positive integer"
done
if [[ -n "$ARCHIVE_NAME" && "$VERSIONED" -eq 1 ]]; then
    die "--archive-name and --versioned both name the archive; pass only one"
fi
if [[ "$VERSIONED" -eq 1 ]]; then
    ARCHIVE_NAME="$MODEL_NAME-v$VERSION"
elif [[ -z "$ARCHIVE_NAME" ]]; then
    ARCHIVE_NAME="$MODEL_NAME"
fi
ARCHIVE_NAME="${ARCHIVE_NAME%.mar}"
[[ "$ARCHIVE_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] \
    || die "invalid --archive-name '$ARCHIVE_NAME': letters, digits, '_', '-', '.'; must start with a letter or digit (no '/')"
case "$FORMAT" in
    torchscript) MODEL_FILE="model.pt" ;;
    onnx) MODEL_FILE="model.onnx" ;;
    onnx-int8) MODEL_FILE="model.int8.onnx"; THRESHOLD_FILE="threshold.int8.json" ;;
    pt2) MODEL_FILE="model.pt2" ;;
    *) die "invalid --format '$FORMAT': allowed are torchscript, onnx, onnx-int8 and pt2" ;;
esac
if [[ -n "$THREADS" ]]; then
    [[ "$THREADS" =~ ^[1-9][0-9]{0,3}$ ]] || die "invalid --threads '$THREADS': must be a positive integer"
elif [[ "$WORKERS" -gt 1 ]]; then
    echo "create_mar.sh: note: each of the $WORKERS workers uses all cores; consider --threads CORES/$WORKERS" >&2
fi
if [[ -n "$MAX_PIXELS" ]]; then
    [[ "$MAX_PIXELS" =~ ^[1-9][0-9]{1,10}$ && "$MAX_PIXELS" -ge 64 ]] \
        || die "invalid --max-pixels '$MAX_PIXELS': must be an integer >= 64"
fi
if [[ -n "$DECODE_MEMORY_MB" ]]; then
    [[ "$DECODE_MEMORY_MB" =~ ^[1-9][0-9]{0,6}$ ]] \
        || die "invalid --decode-memory-mb '$DECODE_MEMORY_MB': must be a whole number of MB >= 1 (the handler also needs >= one image's budget)"
fi

HOW_TO_EXPORT="produce it with 'make demo' or 'python -m train export' (or pass --export-dir)"
[[ -d "$EXPORT_DIR" ]] || die "export folder '$EXPORT_DIR' not found; $HOW_TO_EXPORT"
for f in "$MODEL_FILE" preprocess.json "$THRESHOLD_FILE"; do
    if [[ ! -s "$EXPORT_DIR/$f" ]]; then
        [[ "$f" == model.onnx ]] && die "'$EXPORT_DIR/model.onnx' is missing; add it with: python -m train export-onnx --export $EXPORT_DIR"
        [[ "$f" == model.int8.onnx || "$f" == threshold.int8.json ]] \
            && die "'$EXPORT_DIR/$f' is missing; add it with: python -m train export-int8 --export $EXPORT_DIR (see its --help)"
        [[ "$f" == model.pt2 ]] && die "'$EXPORT_DIR/model.pt2' is missing; add it with: python -m train export-pt2 --export $EXPORT_DIR"
        die "'$EXPORT_DIR/$f' is missing or empty; $HOW_TO_EXPORT"
    fi
done
HANDLER_FILE="$REPO_ROOT/handler/watermark_handler.py"
PREPROCESS_FILE="$REPO_ROOT/handler/preprocess.py"
EVIDENCE_FILE="$REPO_ROOT/handler/evidence.py"
for f in "$HANDLER_FILE" "$PREPROCESS_FILE" "$EVIDENCE_FILE"; do
    [[ -f "$f" ]] || die "'$f' not found (run from a complete checkout)"
done

# JSON checks without importing torch: the handler repeats them strictly at load time.
"$PYTHON" - "$EXPORT_DIR" "$THRESHOLD_FILE" "$FORMAT" "$BATCH_SIZE" <<'PY' || die "invalid export in '$EXPORT_DIR' (see above)"
import json, math, sys
from pathlib import Path
export = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((export / name).read_text(encoding="utf-8"))
    except ValueError as exc:
        sys.exit(f"create_mar.sh: error: {export / name}: not valid JSON ({exc})")
spec = load("preprocess.json")
if not isinstance(spec, dict) or not isinstance(spec.get("image_size"), int):
    sys.exit(f"create_mar.sh: error: {export / 'preprocess.json'}: expected PreprocessSpec.to_dict() with an integer image_size")
thr = load(sys.argv[2])
value = thr.get("threshold") if isinstance(thr, dict) else None
if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
    sys.exit(f"create_mar.sh: error: {export / sys.argv[2]}: expected {{\"threshold\": <number in [0, 1]>, ...}}, got {thr!r}")
info = load("model_info.json") if (export / "model_info.json").exists() else {}
fmt, batch = sys.argv[3], int(sys.argv[4])
if fmt == "onnx-int8" and not (info.get("int8") or {}).get("passed"):
    # a later export-int8 whose check failed leaves the earlier files; its record is what counts
    sys.exit(f"create_mar.sh: error: {export / 'model_info.json'}: the int8 model's latest check did not pass "
             f"({'; '.join((info.get('int8') or {}).get('failures', [])) or 'no check recorded'}); "
             "run python -m train export-int8 again or archive another --format")
max_batch = (info.get("pt2") or {}).get("max_batch")
if fmt == "pt2" and isinstance(max_batch, int) and batch > max_batch:
    sys.exit(f"create_mar.sh: error: --batch-size {batch}: the .pt2 package takes batches of at most {max_batch} "
             "(python -m train export-pt2 --max-batch)")
PY

mkdir -p "$MODEL_STORE"
TARGET="$MODEL_STORE/$ARCHIVE_NAME.mar"
if [[ -e "$TARGET" && "$FORCE" -ne 1 ]]; then
    die "'$TARGET' already exists; pass --force to replace it"
fi

# ------------------------------------------------------------------ archive
# Temp folder inside MODEL_STORE so the final mv is an atomic rename on one filesystem.
WORK_DIR="$(mktemp -d "$MODEL_STORE/.create_mar.XXXXXX")"

CONFIG_FILE="$WORK_DIR/model-config.yaml"
{
    echo "# Generated by scripts/create_mar.sh for $MODEL_NAME $VERSION."
    echo "# TorchServe 0.12 prefers these values over config.properties models={...}."
    echo "minWorkers: $WORKERS"
    echo "maxWorkers: $WORKERS"
    echo "batchSize: $BATCH_SIZE"
    echo "maxBatchDelay: $MAX_BATCH_DELAY"
    echo "responseTimeout: $RESPONSE_TIMEOUT"
    echo "# Read by WatermarkHandler (context.model_yaml_config[\"handler\"])."
    echo "handler:"
    echo "  profile: false  # true adds ts_handler_* timing metrics"
    if [[ -n "$THREADS" ]]; then
        echo "  threads: $THREADS"
    else
        echo "  # threads: unset -> all cores (one worker)"
    fi
    if [[ -n "$MAX_PIXELS" ]]; then
        echo "  max_pixels: $MAX_PIXELS"
    else
        echo "  # max_pixels: unset -> preprocess.json max_pixels"
    fi
    if [[ -n "$DECODE_MEMORY_MB" ]]; then
        echo "  decode_memory_mb: $DECODE_MEMORY_MB"
    else
        echo "  # decode_memory_mb: unset -> two images' decode budgets (4 bytes x max_pixels each)"
    fi
} >"$CONFIG_FILE"

# The archive's threshold.json is the one of the model packed (threshold.int8.json for int8).
mkdir "$WORK_DIR/files"
cp "$EXPORT_DIR/$THRESHOLD_FILE" "$WORK_DIR/files/threshold.json"
EXTRA_FILES="$PREPROCESS_FILE,$EVIDENCE_FILE,$EXPORT_DIR/preprocess.json,$WORK_DIR/files/threshold.json"
if [[ -f "$EXPORT_DIR/model_info.json" ]]; then
    EXTRA_FILES="$EXTRA_FILES,$EXPORT_DIR/model_info.json"
fi

"$ARCHIVER" \
    --model-name "$MODEL_NAME" \
    --version "$VERSION" \
    --serialized-file "$EXPORT_DIR/$MODEL_FILE" \
    --handler "$HANDLER_FILE" \
    --extra-files "$EXTRA_FILES" \
    --config-file "$CONFIG_FILE" \
    --export-path "$WORK_DIR"

[[ -s "$WORK_DIR/$MODEL_NAME.mar" ]] || die "torch-model-archiver did not produce $WORK_DIR/$MODEL_NAME.mar"
mv -f "$WORK_DIR/$MODEL_NAME.mar" "$TARGET"
echo "Wrote $TARGET (model $MODEL_NAME, version $VERSION, $FORMAT, batchSize $BATCH_SIZE, maxBatchDelay ${MAX_BATCH_DELAY}ms)"
if [[ "$ARCHIVE_NAME" != "$MODEL_NAME" ]]; then
    echo "Serve it next to the running version: scripts/manage_models.py register $ARCHIVE_NAME.mar"
fi
