#!/usr/bin/env bash
# Issue 13's GPU measurement in one call of about 8 minutes on one CUDA GPU (the device tool lends 15 minutes a
# session, so a failed first call leaves time for one more).
#
#   bash scripts/gpu_session.sh prepare   # on the CPU machine: fills .gpu/ (git-ignored, ~53 MB)
#   bash scripts/gpu_session.sh run       # on the GPU machine, with .gpu carried: writes to $OUT
#
# `prepare` puts there what the GPU machine lacks: the 112-px copy of UC Merced (scripts/resize_image_folder.py,
# pixel-identical to what training feeds the model), the pretrained backbone of ../shared, and wheels of the
# pure-Python packages its image does not hold in the versions this project pins (datasets, evaluate and their
# dill / multiprocess / fsspec, peft). With the device tool: run(command="bash scripts/gpu_session.sh run",
# carry=[".gpu"], timeout_s=540).
#
# `run` writes, into $OUT (default ./gpu-out), at most 8 files:
#   efficiency_cuda_bf16.{json,md}  scripts/benchmark_efficiency.py on CUDA: ConvNeXt-B, batch 32, 224 px, bf16
#                                   autocast; step time, peak memory and latency ratios of every method
#   accuracy_classification.json    the classification protocol of results/accuracy_classification.json
#   accuracy_summary.md             (12 epochs, lr grid 1/9..9 x each default on split 0 seed 0, then split seeds
#                                   0,1,2 x seeds 0,1) in bf16 for upetu, upetu-1bit, lora and full, one
#                                   process per method; a shard still running at the time limit stops, and the
#                                   runs it finished are kept (the JSON says which are missing; a later call can
#                                   go on from it with --import-runs)
#   environment.txt, logs.tar.gz    versions and GPU; every process's output
# ACCURACY_SECONDS (default 360) bounds the accuracy part.
set -uo pipefail
cd "$(dirname "$0")/.."
GPU_DIR=.gpu
METHODS=(upetu upetu-1bit lora full)

prepare() {
    set -e
    mkdir -p "$GPU_DIR/wheels"
    if [ ! -d "$GPU_DIR/ucmerced-112" ]; then
        python scripts/resize_image_folder.py ../shared/data/ucmerced "$GPU_DIR/ucmerced-112" --size 112
    fi
    rm -rf "$GPU_DIR/model" && cp -r ../shared/models/rs-convnext-atto-aid "$GPU_DIR/model"
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$GPU_DIR/wheels" datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19 \
        fsspec==2026.9.0 peft==0.21.2
    du -sh "$GPU_DIR"
}

run() {
    OUT=${OUT:-./gpu-out}
    local work=/tmp/upetu-gpu
    [ -d "$GPU_DIR/ucmerced-112" ] || { echo "no $GPU_DIR/: run 'bash scripts/gpu_session.sh prepare' and carry .gpu" >&2; exit 2; }
    mkdir -p "$OUT" "$work/logs"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$GPU_DIR"/wheels/*.whl || exit 2
    export PYTHONPATH="$PWD/src:/tmp/site" PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1
    {
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
        python3 -c "import torch, transformers, peft, accelerate, datasets, evaluate, upetu_hf; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0)); \
print('transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__, \
'datasets', datasets.__version__, 'evaluate', evaluate.__version__)"
    } >"$OUT/environment.txt" 2>&1 || { cat "$OUT/environment.txt"; exit 2; }
    cat "$OUT/environment.txt"

    # 1. Efficiency, alone on the GPU so that nothing else competes for it.
    python3 scripts/benchmark_efficiency.py --device cuda --models convnext-b --batch-size 32 --image-size 224 \
        --mixed-precision bf16 --steps 20 --threads 4 --output "$OUT/efficiency_cuda_bf16.json" \
        >"$work/logs/efficiency.log" 2>&1 || echo "benchmark_efficiency failed (see logs.tar.gz)"
    tail -n 3 "$work/logs/efficiency.log"

    # 2. Accuracy: one shard per method, in parallel, then merged (shards and merge share the protocol flags).
    local protocol=(--tasks classification --model "$GPU_DIR/model" --ucm "$GPU_DIR/ucmerced-112" --epochs 12
        --lr-factors 1/9,1/3,1,3,9 --seeds 0,1 --split-seeds 0,1,2 --mixed-precision bf16)
    local pids=() shards=()
    for method in "${METHODS[@]}"; do
        timeout --signal=INT "${ACCURACY_SECONDS:-360}" python3 scripts/benchmark_accuracy.py "${protocol[@]}" \
            --methods "$method" --num-workers 3 --threads 2 --delete-weights \
            --work-dir "$work/$method/work" --output-dir "$work/$method" --resume \
            >"$work/logs/accuracy-$method.log" 2>&1 &
        pids+=($!)
        shards+=("$work/$method/accuracy_classification.json")
    done
    for pid in "${pids[@]}"; do wait "$pid"; done
    local finished=()
    for shard in "${shards[@]}"; do [ -f "$shard" ] && finished+=("$shard"); done
    if [ ${#finished[@]} -gt 0 ]; then
        python3 scripts/benchmark_accuracy.py "${protocol[@]}" --methods "$(IFS=,; echo "${METHODS[*]}")" \
            --work-dir "$work/merged/work" --output-dir "$work/merged" --resume --merge-only \
            --import-runs "${finished[@]}" \
            >"$work/logs/merge.log" 2>&1 || echo "merge failed (see logs.tar.gz)"
        cp "$work/merged/accuracy_classification.json" "$OUT/" 2>/dev/null
        python3 scripts/make_report.py --results-dir "$work/merged" --efficiency "$OUT/efficiency_cuda_bf16.json" \
            --markdown "$OUT/accuracy_summary.md" --plot "$work/merged/plot.png" --readme /dev/null \
            >>"$work/logs/merge.log" 2>&1 || echo "make_report failed (see logs.tar.gz)"
    fi
    grep -h '^\[benchmark' "$work"/logs/accuracy-*.log | grep -E 'validation|chosen' | tail -n 20
    tar -czf "$OUT/logs.tar.gz" -C "$work" logs
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: bash scripts/gpu_session.sh {prepare|run}" >&2; exit 2 ;;
esac
