#!/usr/bin/env bash
# On the GPU machine: Nsight Compute limiter figures of the three prefill kernels that set the
# engine's prefill time — the FP4 prefill GEMM, the SharQ prep and the prefill attention — with the
# stall reasons per issued instruction (the figures docs/perf/hopper.md and engine.md quote), and the
# attention's stall samples per SASS instruction (ncu_hotspots.py).
# Assumes a build in $BUILD (scripts/device/gpu_check.sh makes one). Results in $OUT (or ./gpu-out).
# Usage: scripts/device/prefill_profile.sh [LAYER:M ...]   (default: gate_up:4096 qkv:256 down:512)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
mkdir -p "$OUT"
STALLS='regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio'
SECTIONS=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
          --section Occupancy --section LaunchStats --section WarpStateStats --section InstructionStats
          --section SourceCounters)
summary() {  # the lines worth reading, stalls above 0.3 cycles per instruction only
  grep -E "Duration|Compute \(SM\) Throughput|Issue Slots Busy|Executed Ipc Active|Registers Per|Achieved Occupancy|highest-utilized|stalled" "$1" |
    awk '!/stalled/ || $NF + 0 > 0.3' | head -24
}
LM=("$@")
[[ ${#LM[@]} -eq 0 ]] && LM=(gate_up:4096 qkv:256 down:512)
for lm in "${LM[@]}"; do
  l=${lm%%:*}; m=${lm##*:}
  timeout 120 ncu --kernel-name-base demangled --kernel-name "regex:fp4_prefill_kernel<__half, .int.1, .int.32, .int.256" \
    --launch-skip 2 --launch-count 1 "${SECTIONS[@]}" --metrics "$STALLS" \
    "$B/sharq" bench gemm --model llama3.1-8b --layer "$l" -M "$m" --reps 50 --max-sets 2 -q >"$OUT/ncu_gemm_${l}_$m.txt" 2>&1
  echo "== merged GEMM $l M=$m"; summary "$OUT/ncu_gemm_${l}_$m.txt"
done
timeout 120 ncu --kernel-name-base demangled --kernel-name "regex:sharq_prep_kernel<sharq::SharqNvfp4" --launch-skip 2 --launch-count 1 \
  "${SECTIONS[@]}" --metrics "$STALLS" \
  "$B/sharq" bench gemm --model llama3.1-8b --layer qkv -M 4096 --reps 50 --max-sets 2 -q >"$OUT/ncu_prep_qkv_4096.txt" 2>&1
echo "== SharQ prep qkv M=4096"; summary "$OUT/ncu_prep_qkv_4096.txt"
timeout 180 ncu --kernel-name regex:prefill_kernel --launch-skip 40 --launch-count 1 "${SECTIONS[@]}" --metrics "$STALLS" \
  "$B/sharq" bench model --synthetic llama3.1-8b --schemes fp16 --prefill 1x2048 --batches 1 --steps 2 -q >"$OUT/ncu_attention_2048.txt" 2>&1
echo "== prefill attention, 2048 tokens (fp16 engine)"; summary "$OUT/ncu_attention_2048.txt"
# the same kernel's stall samples per SASS instruction (PC sampling), summarized by ncu_hotspots.py
timeout 180 ncu --kernel-name regex:prefill_kernel --launch-skip 3 --launch-count 1 --section SourceCounters \
  -o "$OUT/attention_src" -f "$B/tests/paged_attention_test" --gtest_filter='*TimingPrint*' >/dev/null 2>&1 &&
  ncu -i "$OUT/attention_src.ncu-rep" --page source --csv --print-source sass >"$OUT/attention_source.csv" 2>&1 &&
  { echo "== prefill attention (paged_attention_test), stall samples per SASS instruction";
    python3 scripts/device/ncu_hotspots.py "$OUT/attention_source.csv" --top 15 | head -45; }
# the profiler's logs name this machine's paths: keep them out of anything committed
sed -i 's#(/[^)]*/sharq)#(sharq)#' "$OUT"/ncu_*.txt
# The SASS opcode mix of the SharQ prep's span kernel and the prefill GEMM (what the PTX cannot
# show: which selects, conversions and divisions survive ptxas), one histogram per kernel.
if command -v cuobjdump >/dev/null; then
  for k in 'sharq_prep_kernel.*SharqNvfp4ELi8E6__halfLi0E' 'fp4_prefill_kernel.*__halfLi1ELi32ELi256ELb0E'; do
    f=$(cuobjdump -symbols "$B/libsharq_cuda.a" 2>/dev/null | grep -oE "_Z[A-Za-z0-9_]*" | grep -E "$k" | head -1)
    [[ -z $f ]] && { echo "no symbol for $k"; continue; }
    cuobjdump -sass -fun "$f" "$B/libsharq_cuda.a" >"$OUT/sass_${k%%.*}.txt" 2>&1
    echo "== SASS opcodes, ${k%%.*} ($(grep -cE '^\s+/\*[0-9a-f]{4}\*/' "$OUT/sass_${k%%.*}.txt") instructions)"
    grep -oE '^\s+/\*[0-9a-f]{4}\*/\s+(@!?U?P[0-9T] )?[A-Z][A-Z0-9]*' "$OUT/sass_${k%%.*}.txt" | awk '{print $NF}' |
      sort | uniq -c | sort -rn | head -25 | tr '\n' ' '
    echo
  done
fi
