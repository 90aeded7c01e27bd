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
#   sweep-prep [ARGS...]  PQCAD recipe sweep on the shipped teacher (or runs/t2i's, when trained here), step 1: the
#                         256 x 20 calibration set, a held-out validation set, the FP images and the FP / PTQ rows,
#                         on 2k seen prompts x 2 noise seeds; ARGS go to t2i_table.py (--prepare-only: sets only)
#   sweep NAME [ARGS...]  one PQCAD variant in the background (t2i_table.py --rows pqcad --label NAME ARGS), e.g.
#                         sweep mid --calib runs/sweep/calib_1024x10.safetensors --calib-trajectories 1024 \
#                         --calib-points 10 (a variant with its own set collects it)
#   wait-sweep SECONDS    wait (at most SECONDS) for the variants; sweep-merge prints and writes one table
#   final-fp / final NAME STUDENT
#                         the full-size table (10k seen + 2k per held-out set, 2 noise seeds): the FP row (and its
#                         image cache), then a chosen student's row against it, each in the background
#   collect               copy results, grids and the fp16 teacher (split under 16 MB) to $OUT
# Carried beside the tree (the device takes 64 MiB in all): .devdata/ (or any .devdata*/) with Fashion-MNIST (images
# .xz, labels .gz; the tables need only the t10k files) and the caption embedding cache (python -m pqcad_deploy.text
# runs/t2i_embeddings.safetensors; .safetensors as .xz, .json as is), and .whl/ with the diffusers wheel. Shipped
# weights that do not fit the tree travel there too, as pqcad_deploy/assets/fmnist_*.safetensors.xz.
set -euo pipefail
cd "$(dirname "$0")/.."
stage="${1:?stage: setup|train|table|collect}"; shift || true
export PQCAD_FMNIST_DIR=/tmp/fmnist PYTHONUNBUFFERED=1
EMB=runs/t2i_embeddings.safetensors
TEACHER=fmnist-t2i; [ -f runs/t2i/fmnist-t2i.safetensors ] && TEACHER=runs/t2i/fmnist-t2i.safetensors
SWEEP=(--teacher "$TEACHER" --embeddings $EMB --work runs/sweep --sets seen --num-samples 2000 --noise-seeds 0 1
  --guidance-sweep --val-trajectories 128 --grids runs/sweep/grids)
FINAL=(--teacher "$TEACHER" --embeddings $EMB --work runs/final --num-samples 10000 --held-out-samples 2000
  --noise-seeds 0 1 --guidance-sweep --grids runs/final/grids)
case "$stage" in
  setup)
    if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl; fi
    python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
    mkdir -p "$PQCAD_FMNIST_DIR" runs
    for f in .devdata*/*; do
      case "$(basename "$f")" in
        t2i_embeddings.*.xz) xz -dc "$f" > "runs/$(basename "${f%.xz}")" ;;
        t2i_embeddings.*) cp "$f" runs/ ;;
        fmnist_*.safetensors.xz) xz -dc "$f" > "pqcad_deploy/assets/$(basename "${f%.xz}")" ;;  # shipped weights
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
    for pid_file in runs/t2i_table/table.pid runs/ptq12/table.pid runs/final/*.pid; do
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
  sweep-prep)
    # the FP and PTQ rows, the shared calibration set and the held-out validation set; --prepare-only: the sets only
    mkdir -p runs/sweep
    python3 benchmarks/t2i_table.py "${SWEEP[@]}" --rows fp ptq --ptq-methods mse \
      --calib runs/sweep/calib_256x20.safetensors --out runs/sweep/prep.json "$@" > runs/sweep/prep.log 2>&1
    tail -2 runs/sweep/prep.log; grep -A4 "^row" runs/sweep/prep.log || true
    ;;
  sweep)
    name="${1:?variant name}"; shift
    setsid nohup python3 benchmarks/t2i_table.py "${SWEEP[@]}" --rows pqcad --ptq-methods mse --label "$name" \
      --calib runs/sweep/calib_256x20.safetensors --out "runs/sweep/v_$name.json" "$@" \
      > "runs/sweep/v_$name.log" 2>&1 < /dev/null &
    echo $! > "runs/sweep/v_$name.pid"
    ;;
  wait-sweep)
    limit="${1:-600}"; t0=$SECONDS
    for pid_file in runs/sweep/v_*.pid; do
      while kill -0 "$(cat "$pid_file")" 2>/dev/null; do
        if [ $((SECONDS - t0)) -ge "$limit" ]; then echo "still running after ${limit}s: $pid_file"; exit 0; fi
        sleep 5
      done
    done
    ;;
  sweep-merge)
    python3 benchmarks/t2i_table.py --merge $(ls runs/sweep/prep.json runs/sweep/v_*.json 2>/dev/null) \
      --out runs/sweep/sweep.json
    ;;
  final-fp)
    mkdir -p runs/final
    setsid nohup python3 benchmarks/t2i_table.py "${FINAL[@]}" --rows fp --out runs/final/fp.json \
      > runs/final/fp.log 2>&1 < /dev/null &
    echo $! > runs/final/fp.pid
    ;;
  final)
    # starts once the FP row (whose images it is scored against) is done
    name="${1:?row label}"; student="${2:?student file}"
    setsid nohup bash -c 'while kill -0 "$(cat runs/final/fp.pid)" 2>/dev/null; do sleep 5; done; exec "$@"' _ \
      python3 benchmarks/t2i_table.py "${FINAL[@]}" --rows pqcad --pqcad-student "$student" --label "$name" \
      --out "runs/final/$name.json" > "runs/final/$name.log" 2>&1 < /dev/null &
    echo $! > "runs/final/$name.pid"
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
      runs/sweep/*.json runs/sweep/*.log runs/sweep/grids runs/final/*.json runs/final/*.log runs/final/grids \
      benchmarks/results/pqcad_grids 2>/dev/null || true
    ls -la "$OUT"
    ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
