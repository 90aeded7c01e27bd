#!/usr/bin/env bash
# The text-to-image testbed on one GPU, as recorded in RESULTS.md ("Text-to-image testbed"). Stages:
#   setup                 install this package without dependencies; unpack Fashion-MNIST from .devdata/
#   train SECONDS [BATCH [STEPS]]
#                         train the teacher in the background: STEPS at BATCH, stopped after SECONDS; without STEPS a
#                         150-step throughput probe sizes the cosine schedule to SECONDS
#   wait-train SECONDS    wait (at most SECONDS) for the background training to write its weights; fails otherwise
#   ptq-table             issue 12's re-run: benchmarks/pqcad_table.py FP + PTQ rows of the unconditional teacher
#                         (needs pqcad_deploy/assets/fmnist_ddpm.safetensors in the tree), in the background
#   wait-table SECONDS    wait (at most SECONDS) for the background tables to finish
#   table [ARGS...]       benchmarks/t2i_table.py on the trained teacher (in the background), ARGS passed through
#   collect               copy results, grids and the fp16 teacher (split under 16 MB) to $OUT
# Carried beside the tree (the device takes 64 MiB in all): .devdata/ with Fashion-MNIST (train images .xz, the rest
# .gz) and the caption embedding cache (python -m pqcad_deploy.text runs/t2i_embeddings.safetensors; .safetensors as
# .xz, .json as is), and .whl/ with the diffusers wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: setup|train|table|collect}"; shift || true
export PQCAD_FMNIST_DIR=/tmp/fmnist PYTHONUNBUFFERED=1
EMB=runs/t2i_embeddings.safetensors
case "$stage" in
  setup)
    if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl; fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    mkdir -p "$PQCAD_FMNIST_DIR" runs
    for f in .devdata/*; do
      case "$(basename "$f")" in
        t2i_embeddings.*.xz) xz -dc "$f" > "runs/$(basename "${f%.xz}")" ;;
        t2i_embeddings.*) cp "$f" runs/ ;;
        *.xz) xz -dc "$f" > "$PQCAD_FMNIST_DIR/$(basename "${f%.xz}")" ;;
        *) cp "$f" "$PQCAD_FMNIST_DIR/" ;;
      esac
    done
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
    python3 -c "import torch, diffusers, pqcad_deploy.train.teacher; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
    ;;
  train)
    budget="${1:-480}"; batch="${2:-512}"; steps="${3:-}"
    if [ -z "$steps" ]; then
      rm -rf runs/t2i_probe
      python3 -m pqcad_deploy.train.cli teacher --model fmnist-t2i --embeddings $EMB --out runs/t2i_probe \
        --steps 150 --warmup 10 --batch-size "$batch" --save-every 100000 --no-progress 2>&1 | tail -2 || true
      rate=$(python3 -c "import json; print(json.load(open('runs/t2i_probe/fmnist-t2i.json'))['training']['img_per_s'])")
      steps=$(python3 -c "print(int($rate * $budget / $batch) // 100 * 100)")
      echo "probe: $rate img/s at batch $batch -> $steps steps in ${budget}s"
    fi
    mkdir -p runs/t2i
    setsid nohup python3 -m pqcad_deploy.train.cli teacher --model fmnist-t2i --embeddings $EMB --out runs/t2i \
      --steps "$steps" --batch-size "$batch" --lr 4e-4 --warmup 500 --ema-decay 0.9995 --hflip --save-fp16 \
      --save-every 1000 --time-limit "$budget" --no-progress > runs/t2i/train.log 2>&1 < /dev/null &
    echo $! > runs/t2i/train.pid
    echo "training $steps steps in the background (pid $!), log runs/t2i/train.log"
    ;;
  wait-train)
    # the weights file is written atomically at the end, so its presence means done; a dead pid without it, failed
    limit="${1:-600}"; t0=$SECONDS
    while [ ! -f runs/t2i/fmnist-t2i.safetensors ]; do
      if ! kill -0 "$(cat runs/t2i/train.pid)" 2>/dev/null; then echo "training died:"; tail -20 runs/t2i/train.log; exit 1; fi
      if [ $((SECONDS - t0)) -ge "$limit" ]; then echo "training still running after ${limit}s"; tail -2 runs/t2i/train.log; exit 1; fi
      sleep 5
    done
    tail -3 runs/t2i/train.log
    ;;
  ptq-table)
    mkdir -p runs/ptq12
    setsid nohup python3 benchmarks/pqcad_table.py --ptq-only --init-ptq percentile --n-samples 10000 \
      --ptq-methods percentile mse maxabs --work runs/ptq12 --out runs/ptq12/pqcad_table_ptq_h200.json \
      > runs/ptq12/table.log 2>&1 < /dev/null &
    echo $! > runs/ptq12/table.pid
    echo "PTQ rows in the background (pid $!), log runs/ptq12/table.log"
    ;;
  wait-table)
    limit="${1:-600}"; t0=$SECONDS
    for pid_file in runs/t2i_table/table.pid runs/ptq12/table.pid; do
      [ -f "$pid_file" ] || continue
      while kill -0 "$(cat "$pid_file")" 2>/dev/null; do
        if [ $((SECONDS - t0)) -ge "$limit" ]; then echo "still running after ${limit}s: $pid_file"; exit 0; fi
        sleep 5
      done
    done
    ;;
  table)
    mkdir -p runs/t2i_table
    setsid nohup python3 benchmarks/t2i_table.py --teacher runs/t2i/fmnist-t2i.safetensors --embeddings $EMB \
      --out runs/t2i_table/t2i_table.json --grids runs/t2i_table/grids "$@" > runs/t2i_table/table.log 2>&1 < /dev/null &
    echo $! > runs/t2i_table/table.pid
    echo "table in the background (pid $!), log runs/t2i_table/table.log"
    ;;
  collect)
    # at most 8 files come back, 16 MiB each: the weights in parts, everything else in one archive
    tail -3 runs/t2i/train.log 2>/dev/null || true
    tail -5 runs/t2i_table/table.log 2>/dev/null || true
    tail -12 runs/ptq12/table.log 2>/dev/null || true
    if [ -f runs/t2i/fmnist-t2i.safetensors ]; then
      split -b 15M runs/t2i/fmnist-t2i.safetensors "$OUT/fmnist-t2i.safetensors.part-"
    fi
    tar czf "$OUT/t2i_results.tgz" --ignore-failed-read runs/t2i/train.log runs/t2i/fmnist-t2i.json \
      runs/t2i/teacher_grid.png runs/t2i_table/t2i_table.json runs/t2i_table/table.log runs/t2i_table/grids \
      runs/t2i_probe/fmnist-t2i.json runs/ptq12/table.log runs/ptq12/pqcad_table_ptq_h200.json \
      benchmarks/results/pqcad_grids 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
