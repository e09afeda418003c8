#!/usr/bin/env bash
# On the GPU machine: an A/B of one `sharq bench model` option on ONE machine, the two values alternated
# (the only controlled comparison: the engine's figures move by a few % between machines), with the
# targets' lines and the breakdown rows of every run. Assumes a build in $BUILD (gpu_check.sh or
# engine_bench.sh makes one). Results in $OUT/ab_<option>.txt (or ./gpu-out).
# Usage: scripts/device/engine_ab.sh OPTION VALUE_A VALUE_B [ROUNDS] [bench model options...]
#   e.g. scripts/device/engine_ab.sh --gemm-residual off on 3 --schemes fp16 --prefill 1x512,1x2048 --batches 1
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
mkdir -p "$OUT"
[[ $# -ge 3 ]] || { echo "usage: $0 OPTION VALUE_A VALUE_B [ROUNDS] [bench model options...]" >&2; exit 2; }
opt=$1 a=$2 b=$3
shift 3
rounds=3
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then rounds=$1; shift; fi
[[ $# -gt 0 ]] || set -- --schemes fp16 --prefill 1x512,1x2048 --batches 1
log="$OUT/ab_${opt#--}.txt"
: >"$log"
for ((i = 1; i <= rounds; ++i)); do
  for v in "$a" "$b"; do
    echo "== $opt $v (round $i)" | tee -a "$log"
    "$B/sharq" bench model --synthetic llama3.1-8b "$opt" "$v" "$@" 2>/dev/null |
      grep -E "^  [a-z0-9:]+ +(batch-1 |batch 1:|prefill )|decode1 |pf2048 |pf512 " | tee -a "$log"
  done
done
