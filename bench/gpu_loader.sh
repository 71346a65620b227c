#!/usr/bin/env bash
# Issue 21 item 5, on one GPU: ResNet-50 at 224 px with AMP fed from 225 px shards by
# the loader with all cores (data-wait share of the step; goal < 10 %), the
# device-cached path beside it, for float32 zstd shards (the default), gzip shards
# (--compression gzip) and uncompressed shards (--compression none), crops on the CPU
# and on the GPU, and standardisation on the GPU too (--prepare-on-device).
#
#   bash bench/gpu_loader.sh runs/gpu_loader
#   N=64 SIZE=48 MODEL=tiny_cnn STEPS=4 WARMUP=1 BATCH=8 bash bench/gpu_loader.sh runs/smoke
#
# Knobs (environment): N (records, default 2000), SIZE (225), MODEL (resnet50), BATCH
# (128), STEPS (60), WARMUP (10), WORKERS (nproc), PYTHON.
set -euo pipefail
# shellcheck disable=SC2086  # an empty $transform adds no argument
run=${1:?usage: bash bench/gpu_loader.sh RUN_DIR}
python=${PYTHON:-python3}
workers=${WORKERS:-$(nproc)}
stamp() { echo "[$(date +%H:%M:%S)] $*"; }
stamp "world: ${N:=2000} records of ${SIZE:=225} px"
"$python" -m extract_GPS_images.synthetic --out "$run/exports" --n "$N" --size "$SIZE" \
    --workers "$workers"
for compression in zstd gzip none; do
    if [[ ! -f $run/shards_$compression/stats.json ]]; then
        stamp "split_and_batch ($compression)"
        "$python" -m utils.batching.split_and_batch "$run/exports" "$run/shards_$compression" \
            --compression "$compression" --workers "$workers" --no-progress
    fi
    for transform in "" --batch-transform "--batch-transform --prepare-on-device"; do
        stamp "loader: $compression shards ${transform:-crops on the CPU}"
        "$python" -m bench.gpu_loader "$run/shards_$compression" --model "${MODEL:-resnet50}" \
            --crop "$((SIZE - 1))" --batch "${BATCH:-128}" --workers "$workers" \
            --steps "${STEPS:-60}" --warmup "${WARMUP:-10}" $transform \
            | tee -a "$run/gpu_loader.log"
    done
done
stamp "done: $run/gpu_loader.log (a JSON line per run)"
