#!/usr/bin/env bash
# The balanced-regression study in the original study's setting, on one GPU: a synthetic
# world of N places of SIZE px (225: Earth Engine's patch), split_and_batch (float16
# shards), then utils.study.run with ResNet-18 on whole patches, every sample kept in GPU
# memory (--cache device), each method once per seed. Steps already done are skipped
# (the world and the shards resume, finished runs are cached).
#
#   bash bench/gpu_study.sh runs/study5k_225
#   N=200 SIZE=32 EPOCHS=1 SEEDS=0 EXPERIMENTS="L2 BMC" bash bench/gpu_study.sh runs/smoke
#
# Knobs (environment): N, SIZE, EPOCHS, SEEDS, LR, BATCH, MODEL, MODELS (several models
# crossed with the experiments, e.g. "resnet18 swin3d_t mosaiks"), WORKERS, PYTHON, WORLD
# (more options of python -m extract_GPS_images.synthetic, e.g. "--tail-noise 1.2"),
# EXPORTS (folder of the world's TFRecords; default RUN_DIR/exports), EXPERIMENTS
# (space-separated names of utils.study.run; names with spaces use _ for the space).
set -euo pipefail
# shellcheck disable=SC2086  # WORLD and SEEDS are lists
run=${1:?usage: bash bench/gpu_study.sh RUN_DIR}
python=${PYTHON:-python3}
workers=${WORKERS:-$(nproc)}
exports=${EXPORTS:-$run/exports}
read -r -a experiments <<<"${EXPERIMENTS:-L2 L3 weighted_L2_a=0.5 resampling_a=0.75 LDS BMC BNI}"
experiments=("${experiments[@]//_/ }")

stamp() { echo "[$(date +%H:%M:%S)] $*"; }
stamp "world: ${N:=5000} places of ${SIZE:=225} px -> $exports"
"$python" -m extract_GPS_images.synthetic --out "$exports" --n "$N" --size "$SIZE" \
    --workers "$workers" ${WORLD:-}
stamp "split_and_batch -> $run/shards"
if [[ ! -f $run/shards/.split_and_batch.done ]]; then
    "$python" -m utils.batching.split_and_batch "$exports" "$run/shards" --dtype float16 \
        --workers "$workers" --no-progress
fi
stamp "study"
"$python" -m utils.study.run --run-dir "$run" --model "${MODEL:-resnet18}" --epochs "${EPOCHS:-10}" \
    --batch-size "${BATCH:-64}" --lr "${LR:-0.001}" --cache device --num-workers "$workers" \
    --seeds ${SEEDS:-0 1 2} --experiments "${experiments[@]}" ${MODELS:+--models $MODELS}
stamp "done"
