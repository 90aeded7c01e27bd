#!/usr/bin/env bash
# The personalization table (issue 15; RESULTS.md "Personalization patches") on one GPU: benchmarks/personalize_table.py
# in background processes, one per subject and base model. Stages:
#   setup            unpack the W8A8 / W4A8 students from their quantizer state (benchmarks/student_state.py) and
#                    the prompt embedding cache, both carried in .devdata*/ (run benchmarks/t2i_gpu.sh setup first)
#   table [ARGS...]  per subject: the FP rows (base-fp, fp) and, per student, base-student, peqa, s1, s2k2, s2k4, mcsu
#                    (FP_ROWS / STUDENT_ROWS choose others; FP_ROWS= skips the FP process); ARGS go to every process
#                    (2026-12-06: --steps 300 --n 32 --noise-seeds 0 1 --fd-n 256, ~2.5 min per row, six processes)
#   wait SECONDS     wait (at most SECONDS) for every process; prints each finished row
#   collect          merge the tables and copy JSON, logs and grids to $OUT
# Made on the CPU first (the GPU has no text encoder):
#   python benchmarks/personalize_table.py --write-prompts runs/pers/prompts.txt
#   python -m pqcad_deploy.text .devdata_g/pers_prompts.safetensors --prompts runs/pers/prompts.txt
#   pqcad-train ptq --teacher fmnist-t2i --bits w8a8 --target onnxruntime --ptq-method mse --calib-trajectories 32 \
#       --calib-steps 20 --out runs/pers/gpu_w8a8.safetensors            # and w4a8
#   python benchmarks/student_state.py pack runs/pers/gpu_w8a8.safetensors fmnist-t2i .devdata_g/w8a8.state.safetensors
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: setup|table|wait|collect}"; shift || true
export PQCAD_FMNIST_DIR=${PQCAD_FMNIST_DIR:-/tmp/fmnist} PYTHONUNBUFFERED=1
P=runs/pg
mkdir -p $P
SUBJECTS=(Bag:red:0 Sneaker:blue:0)
FP_ROWS="${FP_ROWS-base-fp fp}"  # e.g. FP_ROWS= STUDENT_ROWS="s2k2 s2k4 mcsu": only the rows a run left
STUDENT_ROWS="${STUDENT_ROWS:-base-student peqa s1 s2k2 s2k4 mcsu}"
source benchmarks/gpu_jobs.sh
launch() {  # NAME ARGS...
  name="$1"; shift
  job_start $P "$name" python3 benchmarks/personalize_table.py "$@" --out "$P/$name.json"
}
case "$stage" in
  setup)
    for s in .devdata*/*.state.safetensors; do
      b=$(basename "$s" .state.safetensors)
      python3 benchmarks/student_state.py unpack "$s" fmnist-t2i "$P/$b.safetensors"
    done
    cp .devdata*/pers_prompts.safetensors .devdata*/pers_prompts.json $P/
    ;;
  table)
    for subj in "${SUBJECTS[@]}"; do
      tag=$(echo "${subj%%:*}" | tr 'A-Z' 'a-z')
      [ -n "$FP_ROWS" ] && launch "fp_$tag" --subjects "$subj" --rows $FP_ROWS --embeddings $P/pers_prompts.safetensors "$@"
      for st in $P/w*a8.safetensors; do
        b=$(basename "$st" .safetensors)
        launch "${b}_$tag" --subjects "$subj" --student "$st" --label "$b" --rows $STUDENT_ROWS \
          --embeddings $P/pers_prompts.safetensors "$@"
      done
    done
    ;;
  wait)
    jobs_wait $P "${1:-540}" "INFO personalize_table:" 300
    ;;
  collect)
    files=$(ls $P/*_*.json 2>/dev/null | grep -v pers_prompts || true)
    [ -n "$files" ] && python3 benchmarks/personalize_table.py --merge $files --out $P/merged.json || true
    tar czf "$OUT/personalize_results.tgz" --ignore-failed-read $P/*.json $P/*.log $P/*/ 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
