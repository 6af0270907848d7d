#!/usr/bin/env bash
# Issue 27's comparison (PLAN.md): four jobs, two at a time, each resuming from its committed ledger here.
# Run from a git worktree at the plan's commit (a423d7e), so other work does not change what it measures:
#   git worktree add /tmp/wt27 a423d7e && bash results/format_comparison/run.sh /tmp/wt27 /tmp/ucmerced-112
# (the 112-px UCM copy: python scripts/resize_image_folder.py ../shared/data/ucmerced /tmp/ucmerced-112 --size 112)
# Then copy /tmp/format_comparison/<job>/accuracy_classification.json to results/format_comparison/<job>.json and
# run `python scripts/make_report.py` (docs/benchmarks.md reads the paired differences from the ledgers).
set -u
TREE=${1:?worktree at a423d7e} UCM=${2:?112-px UC Merced copy}
HERE=$(cd "$(dirname "$0")" && pwd) OUT=${OUT:-/tmp/format_comparison}
cd "$TREE" && export PYTHONPATH="$TREE/src"
COMMON=(--tasks classification --ucm "$UCM" --model "$HERE/../../../shared/models/rs-convnext-atto-aid" --epochs 12
  --threads 1 --delete-weights --split-seeds 0,1,2,3,4,5,6,7 --seeds 0,1,2 --search-seeds 2 --lr-factors 1/3,1,3
  --resume)
job() {
  local name=$1 ledger="$HERE/$1.json" imports=() extra=()
  [ -f "$ledger" ] && imports+=("$ledger")
  case $name in
    derived) imports+=("$TREE/results/qlinear_ablations/derived-magnitudes-4bit.json")
      set -- python scripts/ablate_qlinear.py derived-magnitudes -- --methods upetu ;;
    format4) imports+=("$TREE/results/search2/accuracy_classification.json") extra=(--lr-factors 1/9,1/3,1,3)
      set -- python scripts/benchmark_accuracy.py --methods upetu ;;
    b32) imports+=("$TREE/results/search2/accuracy_classification.json")
      set -- python scripts/benchmark_accuracy.py --methods upetu-32bit ;;
    format5) imports+=("$TREE/results/search2/accuracy_classification.json")
      set -- python scripts/benchmark_accuracy.py --methods upetu-1bit ;;
  esac
  "$@" "${COMMON[@]}" "${extra[@]}" --output-dir "$OUT/$name" --import-runs "${imports[@]}" > "$OUT/$name.log" 2>&1
}
worker() { for j in "$@"; do mkdir "$OUT/lock-$j" 2>/dev/null && job "$j"; done; }
mkdir -p "$OUT"
worker derived format4 b32 format5 &
sleep 5
worker format4 derived b32 format5 &
wait
