#!/usr/bin/env bash
# On the GPU machine: build everything, run the `gpu` tests, then `sharq bench model` on a
# synthetic model, leaving logs, the CSV and the SVG in $OUT (or ./gpu-out).
# Usage: scripts/device/engine_bench.sh [--no-tests] [--model llama3.1-8b] [bench model options...]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
TESTS=1
MODEL=llama3.1-8b
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-tests) TESTS=0; shift ;;
    --model) MODEL="$2"; shift 2 ;;
    *) break ;;
  esac
done
source scripts/device/carried_shared.sh unpack  # local/shared (and local/ship) -> ../shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/env.txt"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARQ_BUILD_BENCH=OFF >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
ninja -C "$BUILD" >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
echo "build ok"
if [[ $TESTS == 1 ]]; then
  (cd "$BUILD" && ctest -L gpu --output-on-failure -j4) >"$OUT/ctest.log" 2>&1
  grep -E "tests passed|tests failed|\*\*\*Failed|Failed  " "$OUT/ctest.log" | head -30
fi
# the same run's torch peer (a CUDA-graph decode of the same shapes), when torch is there
TORCH=$(python3 scripts/device/torch_decode_peer.py --model "$MODEL" --dtype float16 2>/dev/null | awk '/tok\/s/ {print $(NF-1)}')
echo "torch fp16 decode: ${TORCH:-n/a} tok/s"
"$BUILD/sharq" bench model --synthetic "$MODEL" ${TORCH:+--torch-tok-s $TORCH} --csv "$OUT/bench_model.csv" --svg "$OUT/bench_model.svg" "$@" \
  >"$OUT/bench_model.txt" 2>"$OUT/bench_model.err"
echo "bench model rc=$?"
cat "$OUT/bench_model.txt"
tail -5 "$OUT/bench_model.err"
