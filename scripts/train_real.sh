#!/usr/bin/env bash
# The real-data recipe, end to end (`make train-real`):
#   train on every labelled photo of DATA with the recipe (a held-out split set aside)
#   -> register in MLflow -> int8 model, kept only if it holds on the held-out split
#   -> model_store/watermark.mar (int8, else TorchScript) -> evaluate the held-out split
#   -> generalisation checks (held-out synthetic styles, hard negatives, real stock photos)
#   -> predict DATA/test to a CSV -> one summary table (OUT/summary.md).
#
# Environment:
#   DATA       labelled folder (train/positive, train/negative, optional test/);
#              default ../shared/digikala, the team's real seller photos
#   RECIPE     training options (JSON, see recipes/); default recipes/real-cpu.json
#   OUT        output folder; default artifacts/real
#   CACHE_DIR  feature cache, reused by later runs; default OUT/cache
#   VERSION    archive version (digits and dots); default 2.0
#   MODEL_STORE  where watermark.mar goes; default model_store
#   DEMO_DATA  demo dataset whose eval/ sets measure generalisation; default demo_data (built if missing)
#   REAL_SAMPLES  small real positive/negative folder; default ../shared/real-samples (skipped if absent)
#   RELABEL    relabel file (file,label,reason) for DATA's folder labels; default
#              recipes/digikala-relabel.csv when DATA is the default, else none (RELABEL= for none)
#   EXTRA      more `python -m train train` flags, e.g. EXTRA="--epochs 2"
#   INT8       1 (default): add the int8 model (python -m train export-int8) and archive it
#              when its check passes; 0: archive the TorchScript model
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
DEFAULT_DATA=../shared/digikala
DATA=${DATA:-$DEFAULT_DATA}
if [ "$DATA" = "$DEFAULT_DATA" ]; then RELABEL=${RELABEL-recipes/digikala-relabel.csv}; else RELABEL=${RELABEL-}; fi
RECIPE=${RECIPE:-recipes/real-cpu.json}
OUT=${OUT:-artifacts/real}
CACHE_DIR=${CACHE_DIR:-$OUT/cache}
VERSION=${VERSION:-2.0}
MODEL_STORE=${MODEL_STORE:-model_store}
DEMO=${DEMO_DATA:-demo_data}
REAL_SAMPLES=${REAL_SAMPLES:-../shared/real-samples}
started=$(date +%s)
stamp() { echo "[$(( $(date +%s) - started ))s] $*"; }

[ -x "$PY" ] || { echo "error: $PY missing; run 'make train-real' (it creates .venv first)" >&2; exit 1; }
if [ ! -d "$DATA/train/positive" ] || [ ! -d "$DATA/train/negative" ]; then
  echo "error: $DATA/train/positive and $DATA/train/negative not found." >&2
  echo "  make train-real trains on the team's real seller photos, expected at ../shared/digikala;" >&2
  echo "  point it at your own folder with DATA=/path/to/folder make train-real," >&2
  echo "  or run 'make demo' for the built-in demo dataset." >&2
  exit 2
fi
[ -f "$RECIPE" ] || { echo "error: RECIPE=$RECIPE: file not found (see recipes/)" >&2; exit 2; }
relabel_args=()
if [ -n "$RELABEL" ]; then
  [ -f "$RELABEL" ] || { echo "error: RELABEL=$RELABEL: file not found (RELABEL= for none)" >&2; exit 2; }
  relabel_args=(--relabel "$RELABEL")
fi
mkdir -p "$OUT"
scripts/setup_fonts.sh  # the synthetic overlays draw with the same fonts as the demo data

stamp "1/6 training with $RECIPE on $DATA (held-out split listed in $OUT/reports/holdout.csv)"
# shellcheck disable=SC2086  # EXTRA is a list of flags
"$PY" -m train train --config "$RECIPE" --data "$DATA" --output "$OUT" \
  --cache-dir "$CACHE_DIR" --register --no-progress "${relabel_args[@]}" ${EXTRA:-}
train_seconds=$(( $(date +%s) - started ))

format=torchscript
if [ "${INT8:-1}" = 1 ]; then
  if [ -f "$OUT/reports/val.csv" ]; then
    val_args=(--val "$DATA/train" --val-labels "$OUT/reports/val.csv")
  else
    val_args=(--val "$DATA/val")  # validation from a folder
  fi
  if [ ! -f "$OUT/reports/holdout.csv" ]; then
    stamp "2/6 no held-out split (holdout_fraction 0): no int8 model, TorchScript archived"
  else
    stamp "2/6 int8 model, checked on the held-out split against the fp32 model"
    if "$PY" -m train export-int8 --export "$OUT/export" "${val_args[@]}" \
        --check "$DATA/train" --check-labels "$OUT/reports/holdout.csv"; then
      format=onnx-int8
    else
      echo "  no int8 model (see above; the check is in $OUT/export/model_info.json): TorchScript archived" >&2
    fi
  fi
fi
stamp "2/6 archiving $OUT/export ($format) into $MODEL_STORE/watermark.mar (version $VERSION)"
scripts/create_mar.sh --export-dir "$OUT/export" --format "$format" --version "$VERSION" --model-store "$MODEL_STORE" --force

stamp "3/6 evaluating the held-out split (served preprocessing and threshold)"
"$PY" -m train evaluate --export "$OUT/export" --data "$DATA/train" --labels "$OUT/reports/holdout.csv" \
  --out "$OUT/eval/holdout" --name holdout --overwrite

stamp "4/6 generalisation: synthetic held-out styles, hard negatives, real stock photos"
if [ ! -d "$DEMO/eval" ] && [ "$DEMO" = demo_data ]; then
  scripts/setup_fonts.sh
  "$PY" -m train demo-data "$DEMO" --overwrite
fi
for set in heldout_styles hard_negatives; do
  if [ -d "$DEMO/eval/$set" ]; then
    "$PY" -m train evaluate --export "$OUT/export" --data "$DEMO/eval/$set" --out "$OUT/eval/$set" --name "$set" --overwrite
  else
    echo "  $DEMO/eval/$set not found: skipped"
  fi
done
if [ -d "$REAL_SAMPLES/positive" ]; then
  "$PY" -m train evaluate --export "$OUT/export" --data "$REAL_SAMPLES" --out "$OUT/eval/real_samples" \
    --name real_samples --overwrite
fi

stamp "5/6 predicting $DATA/test"
if [ -d "$DATA/test" ]; then
  "$PY" -m train predict --export "$OUT/export" --input "$DATA/test" --out "$OUT/test_predictions.csv" --overwrite
fi

stamp "6/6 summary"
"$PY" scripts/real_summary.py --out "$OUT" --train-seconds "$train_seconds" --total-seconds "$(( $(date +%s) - started ))"
stamp "done. Serve it: scripts/serve.sh start ($MODEL_STORE/watermark.mar); figures in $OUT/summary.md"
