#!/usr/bin/env bash
# On the GPU machine: configure + build the CUDA part, run the `gpu`-labelled tests, optionally
# compute-sanitizer over them, and leave logs in $OUT (or ./gpu-out).
# Usage: scripts/device/gpu_check.sh [--sanitize] [--filter REGEX] [extra ctest args]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
SAN=0
FILTER=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sanitize) SAN=1; shift ;;
    --filter) FILTER="$2"; shift 2 ;;
    *) break ;;
  esac
done
BUILD=${BUILD:-build-gpu}
# the on-disk model tests read ../shared, which does not travel: use the carried copy (local/shared) when
# it came along, or they skip
source scripts/device/carried_shared.sh unpack  # local/shared (and local/ship) -> ../shared
# the image has no cpp-httplib: use the carried Debian files when they came along (sharq serve)
if [[ -d local/debs ]] && ! pkg-config --exists cpp-httplib 2>/dev/null; then source scripts/device/carried_httplib.sh local/debs; fi  # the folder named: a sourced file without arguments would see this script's own (ctest options)
{
  echo "tree: the working tree as sent (the device copy's .git may be stale: record the local HEAD)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  nvcc --version | tail -1
} | tee "$OUT/env.txt"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARQ_BUILD_BENCH=OFF >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
# TARGETS="a_test b_test": build and run only those binaries (while other tests are in progress)
ninja -C "$BUILD" ${TARGETS:-} >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
echo "build ok"
if [[ -n "${TARGETS:-}" ]]; then
  for t in $TARGETS; do [[ $t == *_test ]] && "$BUILD/tests/$t" ${GTEST_FILTER:+--gtest_filter=$GTEST_FILTER}; done 2>&1 | tee "$OUT/tests.log" | grep -E "^\[  FAILED|^\[  PASSED|FAILED TEST|Failure|error|merged|Expected|Which|actual" | head -80
else
  (cd "$BUILD" && ctest -L gpu ${FILTER:+-R "$FILTER"} --output-on-failure "$@") 2>&1 | tee "$OUT/ctest.log" | tail -40
  # the failing tests' own output, small enough to come back from a device call with the summary
  grep -q "tests failed" "$OUT/ctest.log" && grep -B3 -A25 -E "Failure|\*\*\*Failed|Exception" "$OUT/ctest.log" | head -300 >"$OUT/failures.txt"
fi
if [[ $SAN == 1 ]]; then
  for t in "$BUILD"/tests/*_test; do
    case "$(basename "$t")" in
      codec_parity_test|gemv16_test|sharq_prep_test|gpu_linear_test|fp4_gemm_prefill_test|fp4_gemm_small_test|cublaslt_gemm_test|engine_test|paged_attention_test|transformer_ops_test) ;;
      *) continue ;;
    esac
    # the timing prints (long loops, nothing asserted) are left out under the sanitizer
    filt=${SAN_FILTER:-}
    [[ -z $filt && $(basename "$t") == paged_attention_test ]] && filt='-*TimingPrint*'
    echo "== compute-sanitizer memcheck $(basename "$t")"
    timeout "${SAN_TIMEOUT:-600}" compute-sanitizer --tool memcheck --error-exitcode 9 "$t" ${filt:+--gtest_filter=$filt} >"$OUT/memcheck_$(basename "$t").log" 2>&1
    echo "rc=$? $(grep -E 'ERROR SUMMARY' "$OUT/memcheck_$(basename "$t").log")"
  done | tee "$OUT/memcheck_summary.txt"
fi
