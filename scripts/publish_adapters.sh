#!/usr/bin/env bash
# Train and publish the two UC Merced adapters of notebook 4, upetu-hf/convnext-base-ucm-upetu-1bit and -4bit:
# ConvNeXt-B (facebook/convnext-base-224-22k) on UCM-55 (blanchon/UC_Merced: half of each class trains, split
# seed 0; 10 % of the training half picks the best epoch), 20 epochs at 224 px in bf16, UPetu's defaults except
# the bit width. `upetu-train --push-to-hub` checks the repo id and the token before training, uploads the run
# folder (without checkpoints) at the end and writes the model card (base model, dataset, test metrics).
#
# Needs: a CUDA GPU with bf16 (about 1,000 training images x 20 epochs per adapter), `huggingface-cli login`
# with write access to the upetu-hf organisation, and this package installed (`pip install -e .`).
#
#   bash scripts/publish_adapters.sh --dry-run              # print the two upetu-train commands, run nothing
#   bash scripts/publish_adapters.sh [--output-root runs]   # train and push both
#
# A run folder that already holds a finished run is refused by upetu-train: remove it or pass --overwrite through
# EXTRA_ARGS (e.g. EXTRA_ARGS="--overwrite" bash scripts/publish_adapters.sh).
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
}

dry_run=0
output_root="runs"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --output-root)
            [[ $# -ge 2 ]] || { echo "publish_adapters.sh: --output-root needs a folder" >&2; exit 2; }
            output_root="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "publish_adapters.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

# One command per bit width, as an array in $command (words kept apart, no eval).
command_for() {
    local bits="$1" name="convnext-base-ucm-upetu-$1bit"
    command=(
        upetu-train classification
        --model facebook/convnext-base-224-22k
        --data blanchon/UC_Merced
        --train-fraction 0.5 --split-seed 0 --validation-fraction 0.1
        --image-size 224 --epochs 20 --batch-size 32 --mixed-precision bf16
        --method upetu --bits "$bits"
        --output-dir "$output_root/$name"
        --push-to-hub --hub-model-id "upetu-hf/$name"
    )
    # shellcheck disable=SC2206  # EXTRA_ARGS is split into words on purpose
    command+=(${EXTRA_ARGS:-})
}

if [[ $dry_run -eq 0 ]]; then
    if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "publish_adapters.sh: no CUDA GPU: these are ConvNeXt-B runs in bf16 (--dry-run prints them)" >&2
        exit 2
    fi
fi

for bits in 1 4; do
    command_for "$bits"
    if [[ $dry_run -eq 1 ]]; then
        line=$(printf '%q ' "${command[@]}")
        echo "${line% }"
    else
        echo "+ ${command[*]}" >&2
        "${command[@]}"
    fi
done
