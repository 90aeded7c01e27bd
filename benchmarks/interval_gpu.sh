#!/usr/bin/env bash
# Timestep-aware PTQ tables on one GPU (RESULTS.md "Timestep-aware PTQ"), benchmarks/interval_ptq.py in background
# processes that share one FP image cache per teacher. Each process writes its JSON after every row; a quantized row
# took 6-17 min with six processes on one H100 (2026-12-06), so each process lists its goal rows first. Stages:
#   uncond [ARGS...]  the unconditional teacher, 10k images x noise seeds 0/1: FP images first, then W8A8 rows
#                     (K = 1/2/4/8, progressive, relaxing tau 0.05/0.1/0.2), W4A8 rows and rows on the shipped PQCAD
#                     student, in four processes (needs the uncond weights in the tree; they are copied to
#                     /tmp/assets first, so a later call with another tree cannot remove them under the processes)
#   uncond-rest / t2i-rest [ARGS...]
#                     the same tables' rows that the first run (2026-12-06) left unmeasured, goal rows first, in
#                     fewer processes (three and two: six processes did not finish more rows per minute)
#   uncond-last [ARGS...]
#                     the K and tau sweep rows that uncond-rest (second session) left: K = 2 / 8, tau 0.05 / 0.2
#                     (W8A8), in two processes beside the personalization table (benchmarks/personalize_gpu.sh)
#   t2i [ARGS...]     the text-to-image teacher, 2k seen + 1k held-out-template prompts x seeds 0/1, W8A8 and W4A8
#                     (needs the caption embeddings: benchmarks/t2i_gpu.sh setup unpacks them); ARGS go to every
#                     process (a smoke run: --n 8 --trajectories 2 --steps 4 --batch-size 8 --method maxabs)
#   wait SECONDS      wait (at most SECONDS) for every process; prints each finished row
#   collect           merge each teacher's tables and copy JSON and logs to $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: uncond|t2i|wait|collect}"; shift || true
export PQCAD_FMNIST_DIR=/tmp/fmnist PYTHONUNBUFFERED=1
mkdir -p runs/ip
source benchmarks/gpu_jobs.sh
A=/tmp/assets
U=(--teacher $A/fmnist_ddpm.safetensors --n 10000 --batch-size 1000 --trajectories 64 --noise-seeds 0 1 --fp-cache runs/ip/fp_uncond.safetensors)
T=(--teacher fmnist-t2i --embeddings runs/t2i_embeddings.safetensors --n 2000 --held-out 1000 --batch-size 1000
   --trajectories 64 --noise-seeds 0 1 --fp-cache runs/ip/fp_t2i.safetensors)
launch() {  # NAME ARGS...: one benchmark process in the background, after the FP cache of its teacher exists
  name="$1"; shift
  setsid nohup bash -c 'while [ -f "runs/ip/$0.fp_pending" ]; do sleep 3; done; exec python3 benchmarks/interval_ptq.py "$@"' \
    "${name%%_*}" "$@" --out "runs/ip/$name.json" > "runs/ip/$name.log" 2>&1 < /dev/null &
  echo $! > "runs/ip/$name.pid"
}
fp() {  # TEACHER ARGS...: the FP row (fills the cache) in the background; the other processes wait for it
  t="$1"; shift
  touch "runs/ip/$t.fp_pending"
  setsid nohup bash -c 'python3 benchmarks/interval_ptq.py "$@" --rows fp --out "runs/ip/$0_fp.json"; rm -f "runs/ip/$0.fp_pending"' \
    "$t" "$@" > "runs/ip/${t}_fp.log" 2>&1 < /dev/null &
  echo $! > "runs/ip/${t}_fp.pid"
}
assets() {  # the shipped weights the tree holds (a tree without the PQCAD student skips its rows)
  mkdir -p $A; for f in pqcad_deploy/assets/fmnist_{ddpm,pqcad_w8a8}.safetensors; do [ -f "$f" ] && cp "$f" "${f%.safetensors}.json" $A/; done; true
}
case "$stage" in
  uncond)
    assets
    fp u "${U[@]}" "$@"
    launch u_w8a "${U[@]}" --bits w8a8 --rows k1 k4p+r0.1 k2 k8 "$@"
    launch u_w8b "${U[@]}" --bits w8a8 --rows k4p k4p+r0.05 k4p+r0.2 k4 "$@"
    launch u_w4 "${U[@]}" --bits w4a8 --rows k1 k4p k4p+r0.1 k4 "$@"
    launch u_pq "${U[@]}" --student $A/fmnist_pqcad_w8a8.safetensors --rows student k4p+r0.1 k4p k1 "$@"
    ;;
  uncond-rest)
    assets
    fp u "${U[@]}" "$@"
    launch u_w8 "${U[@]}" --bits w8a8 --rows k4p+r0.1 k4 k2 k8 k4p+r0.05 k4p+r0.2 "$@"
    launch u_w4r "${U[@]}" --bits w4a8 --rows k4p+r0.1 k4p k4 "$@"
    launch u_pqr "${U[@]}" --student $A/fmnist_pqcad_w8a8.safetensors --rows k4p+r0.1 k4p "$@"
    ;;
  uncond-last)
    assets
    fp u "${U[@]}" "$@"
    launch u_w8k "${U[@]}" --bits w8a8 --rows k2 k4p+r0.05 "$@"
    launch u_w8l "${U[@]}" --bits w8a8 --rows k8 k4p+r0.2 "$@"
    ;;
  t2i-rest)
    fp t "${T[@]}" "$@"
    launch t_w8r "${T[@]}" --bits w8a8 --rows k4p+r0.1 k4p k4 "$@"
    launch t_w4r "${T[@]}" --bits w4a8 --rows k4p+r0.1 k4 "$@"
    ;;
  t2i)
    fp t "${T[@]}" "$@"
    launch t_w8 "${T[@]}" --bits w8a8 --rows k1 k4p+r0.1 k4p k4 "$@"
    launch t_w4 "${T[@]}" --bits w4a8 --rows k1 k4p k4p+r0.1 "$@"
    ;;
  wait)
    jobs_wait runs/ip "${1:-540}" "INFO interval_ptq:" 400
    ;;
  collect)
    for t in u t; do
      files=$(ls runs/ip/${t}_*.json 2>/dev/null || true)
      [ -n "$files" ] && python3 benchmarks/interval_ptq.py --merge $files --out "runs/ip/merged_$t.json" || true
    done
    tar czf "$OUT/interval_results.tgz" --ignore-failed-read runs/ip/*.json runs/ip/*.log 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
