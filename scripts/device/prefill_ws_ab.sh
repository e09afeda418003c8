#!/usr/bin/env bash
# On the GPU machine: the warp-specialized prefill kernel (`--kernel prefill_ws`) against the
# current one (`--kernel prefill`) in one call: build, the prefill tests (both kernels), memcheck /
# racecheck of the WS tests, the same-process bench of both kernels, and Nsight Compute's pipe and
# issue figures for each on gate_up M = 4096. Results in $OUT.
# Usage: scripts/device/prefill_ws_ab.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
mkdir -p "$OUT"
T=$SECONDS
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARQ_BUILD_BENCH=OFF >"$OUT/configure.log" 2>&1
ninja -C "$B" sharq_cli fp4_gemm_prefill_test >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -20; exit 1; }
echo "[t] build $((SECONDS - T)) s"
timeout 300 "$B/tests/fp4_gemm_prefill_test" 2>&1 | tee "$OUT/prefill_test.log" | grep -E "^\[  (FAILED|PASSED)|OK \]|Failure" | head -30
echo "[t] tests $((SECONDS - T)) s"
timeout 200 compute-sanitizer --tool memcheck --error-exitcode 9 "$B/tests/fp4_gemm_prefill_test" --gtest_filter='*Ws*' \
  >"$OUT/memcheck_ws.log" 2>&1; echo "memcheck ws rc=$? $(grep 'ERROR SUMMARY' "$OUT/memcheck_ws.log")"
timeout 200 compute-sanitizer --tool racecheck --error-exitcode 9 "$B/tests/fp4_gemm_prefill_test" --gtest_filter='*Ws*' \
  >"$OUT/racecheck_ws.log" 2>&1; echo "racecheck ws rc=$? $(grep -E 'RACECHECK SUMMARY' "$OUT/racecheck_ws.log")"
for k in prefill prefill_ws; do
  "$B/sharq" bench gemm --model llama3.1-8b -M 256,1024,4096 --kernel $k --csv -q >"$OUT/bench_$k.csv" 2>"$OUT/bench_$k.err"
done
/usr/bin/python3 - "$OUT" <<'PY'
import csv, os, sys
o = sys.argv[1]
rows = {k: {(x['layer'], x['M']): x for x in csv.DictReader(open(os.path.join(o, f'bench_{k}.csv')))} for k in ('prefill', 'prefill_ws')}
print("layer M | merged GEMM us prefill / ws | exact GEMM prefill / ws | w4a16 prefill / ws | fp16")
for key, a in rows['prefill'].items():
    b = rows['prefill_ws'].get(key, {})
    print(*key, '|', a['us_merged_gemm'], b.get('us_merged_gemm'), '|', a['us_exact_gemm'], b.get('us_exact_gemm'), '|',
          a['us_w4a16'], b.get('us_w4a16'), '|', a['us_fp16'])
PY
for k in prefill prefill_ws; do
  timeout 120 ncu --kernel-name-base demangled --kernel-name "regex:fp4_${k}_kernel<__half, .int.1, .int.32, .int.256" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
    "$B/sharq" bench gemm --model llama3.1-8b --layer gate_up -M 4096 --kernel $k --reps 50 --max-sets 2 -q >"$OUT/ncu_$k.txt" 2>&1
  echo "== $k"; grep -E "Duration|Issue Slots Busy|Warp Cycles Per Issued|Registers Per|Achieved Occupancy|highest-utilized" "$OUT/ncu_$k.txt" | head -8
done
echo "[t] end $((SECONDS - T)) s"
