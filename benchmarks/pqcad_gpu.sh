#!/usr/bin/env bash
# Issue 19 on one GPU (RESULTS.md "PQCAD"): the W4A8 recipe decision (benchmarks/pqcad_table.py, one process per
# training seed: PQ+CAD with lambda_c 1 / 0.3 / 0.1 / 0, fixed-bit QAT and the fixed-switch control, the adaptive
# switch on the held-out probe) and the halving chain in the ONNX Runtime placement (benchmarks/halving_chain.py
# --target onnxruntime), as background processes; ORT_FD=1 adds issue 18's FD of the shipped ORT-form student at
# DDIM 50 beside the teacher at DDIM 50 (pqcad-eval, noise seeds 0 and 1). Stages:
#   table [ARGS...]  launch them; ARGS go to every pqcad_table.py process (e.g. --train-steps 800 --stage1-cap 400),
#                    CHAIN_ARGS to halving_chain.py; SEEDS (default "0 1"), BRANCHES, N (images per row and noise
#                    seed, default 10000; SEEDS="" runs none); NO_CHAIN=1 skips the chain; QUICK=1: CPU smoke run;
#                    SPLIT="pq,pq_alone qat fixed_switch" splits each seed's branches over parallel processes (a
#                    group without pq or a branch of it does not train pq; the GPU is shared, the Python is not;
#                    TAG names a second launch's groups, w4a8_s<seed>_<TAG><n>, so they do not collide)
#   wait SECONDS     wait at most SECONDS for every process; print what finished
#   collect          merge the per-seed tables and copy JSON, logs, training curves and grids to $OUT
# The shipped weights are not in the slim tree: run benchmarks/t2i_gpu.sh setup first (it unpacks
# .devdata*/fmnist_*.safetensors.xz into pqcad_deploy/assets/).
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: table|wait|collect}"; shift || true
export PQCAD_FMNIST_DIR=${PQCAD_FMNIST_DIR:-/tmp/fmnist} PYTHONUNBUFFERED=1
P=runs/pg19
SEEDS="${SEEDS-0 1}" BRANCHES="${BRANCHES:-pq pq_alone pq_c0.1 pq_c0.3 qat fixed_switch}" N="${N:-10000}"
QUICK_ARG=${QUICK:+--quick}
mkdir -p $P
source benchmarks/gpu_jobs.sh
launch() { job_start $P "$@"; }  # NAME COMMAND...
case "$stage" in
  table)
    # fail here, not in every background process: a missing wheel or teacher cost a whole device call once
    python3 -c "import diffusers, pqcad_deploy" 2>/dev/null \
      || { echo "diffusers or pqcad_deploy missing: carry .whl/ and run benchmarks/t2i_gpu.sh setup" >&2; exit 1; }
    [ -n "${QUICK:-}" ] || [ -f pqcad_deploy/assets/fmnist_ddpm.safetensors ] \
      || { echo "no teacher weights: carry .devdata*/fmnist_ddpm.safetensors.xz and run t2i_gpu.sh setup" >&2; exit 1; }
    for s in $SEEDS; do
      g=0
      for group in ${SPLIT:-${BRANCHES// /,}}; do
        name="w4a8_s$s"; [ -n "${SPLIT:-}" ] && name="w4a8_s${s}_${TAG:-g}$g"
        # shellcheck disable=SC2086
        launch "$name" python3 benchmarks/pqcad_table.py $QUICK_ARG --skip-ptq --n-samples "$N" --seeds "$s" \
          --noise-seeds 0 1 --deadline-s 0 --switch-signal probe --branches ${group//,/ } --eval-steps 100 \
          --work "$P/work_${name#w4a8_}" --out "$P/$name.json" "$@"
        g=$((g + 1))
      done
    done
    if [ -z "${NO_CHAIN:-}" ]; then
      # shellcheck disable=SC2086
      launch chain_ort python3 benchmarks/halving_chain.py $QUICK_ARG --target onnxruntime --n-samples "$N" \
        --noise-seeds 0 1 --work "$P/chain_ort" --out "$P/chain_ort.json" ${CHAIN_ARGS:-}
    fi
    if [ -n "${ORT_FD:-}" ]; then
      T=pqcad_deploy/assets/fmnist_ddpm.safetensors S=pqcad_deploy/assets/fmnist_pqcad_w8a8_ort.safetensors
      # FD only (fidelity to FP is measured on the CPU); ORT_FD_N images per noise seed (default 10000)
      launch ort_fd bash -c "set -e; for s in 0 1; do
        pqcad-eval --checkpoint $T --steps 50 --num-samples ${ORT_FD_N:-10000} --seed \$s --json $P/fd_fp50_s\$s.json
        pqcad-eval --checkpoint $S --steps 50 --num-samples ${ORT_FD_N:-10000} --seed \$s --json $P/fd_ort50_s\$s.json
      done"
    fi
    ;;
  wait)
    jobs_wait $P "${1:-540}" "switch:\|JSON:"
    ;;
  collect)
    files=$(ls "$P"/w4a8_s*.json 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -n "$files" ] && python3 benchmarks/pqcad_table.py --merge $files --out "$P/w4a8_merged.json" || true
    tar czf "${OUT:?OUT: where to copy the results}/pqcad_gpu_results.tgz" --ignore-failed-read "$P"/*.json \
      "$P"/*.log "$P"/work_s*/*_curve.png "$P"/chain_ort/*_curve.png "$P"/chain_ort_grids \
      benchmarks/results/pqcad_grids 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
