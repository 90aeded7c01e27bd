#!/usr/bin/env bash
# The StyleForge table (issue 16; RESULTS.md "StyleForge") on one GPU: benchmarks/style_table.py in background
# processes, one per style and learning rate. Stages:
#   setup            copy the prompt embedding cache carried in .devdata*/ (run benchmarks/t2i_gpu.sh setup and
#                    benchmarks/personalize_gpu.sh setup first: the latter unpacks the W8A8 student of the peqa row)
#   table [ARGS...]  four processes per style: _a the teacher and StyleRef-only at LR_A; _s Single-StyleForge at
#                    LR_A with its PTQ W8A8 / W4A8 (BITS) and PQCAD W8A8 (PQCAD_STEPS) rows; _m Multi-StyleForge at
#                    LR_A and PEQA on the W8A8 student; _b the ROWS_B FP rows again at LR_B and STEPS_B steps if set
#                    (label @LR_BxSTEPS_B; ROWS_B="" skips them). ARGS go to every process (_b's label and steps
#                    win); each rewrites its JSON per row
#   wait SECONDS     wait (at most SECONDS) for every process; prints each finished row
#   collect          merge the tables and copy JSON, logs and grids to $OUT, the scored images one tar per style
# Made on the CPU first (the GPU has no text encoder):
#   python benchmarks/style_table.py --write-prompts runs/style/prompts.txt
#   python -m pqcad_deploy.text .devdata_g/style_prompts.safetensors --prompts runs/style/prompts.txt
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: setup|table|wait|collect}"; shift || true
export PQCAD_FMNIST_DIR=${PQCAD_FMNIST_DIR:-/tmp/fmnist} PYTHONUNBUFFERED=1
P=runs/sg
mkdir -p $P
STYLES="${STYLES:-outline halftone stripes}"
# 2e-5 learned outline only on the GPU; on the CPU 1e-4 broke the StyleRef-only model (RESULTS "StyleForge"):
# STEPS_B (e.g. 600) gives the _b rows more steps instead of a higher rate
LR_A="${LR_A:-5e-5}" LR_B="${LR_B:-1e-4}" STEPS_B="${STEPS_B:-}"
ROWS_A="${ROWS_A:-teacher dreambooth}" ROWS_B="${ROWS_B-dreambooth single multi}" BITS="${BITS-w8a8 w4a8}"
PQCAD_STEPS="${PQCAD_STEPS:-400}"
source benchmarks/gpu_jobs.sh
launch() {  # NAME ARGS...
  name="$1"; shift
  job_start $P "$name" python3 benchmarks/style_table.py "$@" --work "$P/work_$name" --out "$P/$name.json"
}
case "$stage" in
  setup)
    cp .devdata*/style_prompts.safetensors .devdata*/style_prompts.json $P/
    ;;
  table)
    for s in $STYLES; do
      launch "${s}_a" --styles "$s" --lr "$LR_A" --rows $ROWS_A --bits --embeddings $P/style_prompts.safetensors "$@"
      launch "${s}_s" --styles "$s" --lr "$LR_A" --rows single --bits $BITS --pqcad-steps "$PQCAD_STEPS" \
        --embeddings $P/style_prompts.safetensors "$@"
      launch "${s}_m" --styles "$s" --lr "$LR_A" --rows multi --bits --student runs/pg/w8a8.safetensors \
        --embeddings $P/style_prompts.safetensors "$@"
      if [ -n "$ROWS_B" ]; then
        launch "${s}_b" --styles "$s" --lr "$LR_B" --rows $ROWS_B --bits --embeddings $P/style_prompts.safetensors \
          "$@" --label "@$LR_B${STEPS_B:+x$STEPS_B}" ${STEPS_B:+--steps "$STEPS_B"}
      fi
    done
    ;;
  wait)
    jobs_wait $P "${1:-540}" "INFO style_table:" 300
    ;;
  collect)
    files=$(ls $P/*_[absm].json 2>/dev/null || true)
    [ -n "$files" ] && python3 benchmarks/style_table.py --merge $files --out $P/merged.json || true
    tar czf "$OUT/style_results.tgz" --ignore-failed-read --exclude='*.npz' $P/*.json $P/*.log $P/*_grids/ \
      2>/dev/null || true
    for s in $STYLES; do  # the scored images (style_table.py keeps them for re-scoring), one file per style
      tar cf "$OUT/style_images_$s.tar" --ignore-failed-read $P/${s}_*_grids/*.npz 2>/dev/null || true
    done
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
