#!/usr/bin/env bash
# On the GPU machine: where a batch-1 decode step's time goes. For each scheme, Nsight Compute
# measures every kernel of one graph-replayed decode step (bench model's profiler range), serialized
# and without cache flushes (CSV in $TMPDIR), summed per kernel name into $OUT/kernels.txt; the sum of the kernels against the step's
# wall time (bench model's own figure, same run) gives the time between kernels. Optionally one
# full-section profile of the decode attention kernel, with its stall samples per SASS instruction
# (ATTN=1: ncu_attention.txt, ncu_attention_hotspots.txt).
# Usage: SCHEMES="fp16 sharq:merged" scripts/device/decode_profile.sh
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
mkdir -p "$OUT"
cmake -S . -B "$B" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARQ_BUILD_BENCH=OFF >/dev/null 2>&1
ninja -C "$B" sharq_cli >"$OUT/build_cli.log" 2>&1 || { grep error "$OUT/build_cli.log" | head -20; exit 1; }
args=(bench model --synthetic llama3.1-8b --prefill ${PREFILL:-1x16} --batches 1 --steps 16 -q)
for s in ${SCHEMES:-fp16 sharq:merged}; do
  f="${TMPDIR:-/tmp}/ncu_${s//:/_}.csv"
  ncu --profile-from-start off --graph-profiling node --cache-control none --clock-control none \
      --metrics gpu__time_duration.sum --csv "$B/sharq" "${args[@]}" --schemes "$s" >"$f" 2>"${TMPDIR:-/tmp}/ncu_err.log"
  /usr/bin/python3 - "$f" "$s" <<'PY'
import csv, sys, collections
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; ki = hdr.index("Kernel Name"); vi = hdr.index("Metric Value"); ui = hdr.index("Metric Unit")
steps = []  # each step starts with the embedding gather: the first prefill, then the decode step
for r in rows[1:]:
    v = float(r[vi].replace(",", ""))
    v = v / 1000 if r[ui] in ("ns", "nsecond") else v * 1000 if r[ui] in ("ms", "msecond") else v
    k = r[ki].replace("(anonymous namespace)::", "").replace("void ", "").replace("sharq::cuda::", "")
    k = k.replace("sharq::<unnamed>::", "").split("(")[0][:70]
    if k.startswith("embed_kernel") or not steps: steps.append((collections.OrderedDict(), collections.Counter()))
    tot, n = steps[-1]
    tot[k] = tot.get(k, 0) + v; n[k] += 1
for si, (tot, n) in enumerate(steps):
    what = "prefill" if si == 0 and len(steps) > 1 else "decode b1"
    print(f"{sys.argv[2]} {what}: {sum(n.values())} kernels, sum {sum(tot.values()):.1f} us")
    for k, v in sorted(tot.items(), key=lambda kv: -kv[1]): print(f"  {v:9.1f} us  {n[k]:4d}x  {v / n[k]:7.2f} us  {k}")
PY
done | tee "$OUT/kernels.txt"
"$B/sharq" "${args[@]}" --schemes "$(echo ${SCHEMES:-fp16 sharq:merged} | tr ' ' ',')" >"$OUT/bench_b1.txt" 2>&1
grep -E "^(fp16|fp8|w4a16|nvfp4|sharq)" "$OUT/bench_b1.txt" | head -12
if [[ ${ATTN:-0} == 1 ]]; then
  rep="${TMPDIR:-/tmp}/ncu_attention"
  ncu --profile-from-start off --graph-profiling node --clock-control none -k regex:decode_kernel -c 1 --set full \
      --import-source no -o "$rep" -f "$B/sharq" "${args[@]}" --schemes fp16 >/dev/null 2>&1
  ncu -i "$rep.ncu-rep" --page details >"$OUT/ncu_attention.txt" 2>&1
  grep -E "Duration|Throughput|Stall|Warp Cycles|Issued|Occupancy|Registers|Eligible|L2 Hit|Bandwidth" "$OUT/ncu_attention.txt" | head -60
  # where its warps wait, per SASS instruction and per address window (the full set has SourceCounters)
  ncu -i "$rep.ncu-rep" --page source --csv --print-source sass \
      >"${rep}_src.csv" 2>/dev/null
  /usr/bin/python3 scripts/device/ncu_hotspots.py "${rep}_src.csv" --top 40 --window 0x200 \
      --min 20 >"$OUT/ncu_attention_hotspots.txt" 2>&1
  head -50 "$OUT/ncu_attention_hotspots.txt"
fi
if [[ ${PREFILL_ATTN:-0} == 1 ]]; then  # one prefill attention call of the first prefill (use PREFILL=1x2048)
  ncu --profile-from-start off --clock-control none -k regex:prefill_kernel -s 8 -c 1 --set full \
      --metrics smsp__pcsamp_warps_issue_stalled_barrier,smsp__pcsamp_warps_issue_stalled_long_scoreboard,smsp__pcsamp_warps_issue_stalled_short_scoreboard,smsp__pcsamp_warps_issue_stalled_math_pipe_throttle,smsp__pcsamp_warps_issue_stalled_mio_throttle,smsp__pcsamp_warps_issue_stalled_wait,smsp__pcsamp_warps_issue_stalled_not_selected,smsp__pcsamp_warps_issue_stalled_selected,smsp__pcsamp_warps_issue_stalled_dispatch_stall,smsp__pcsamp_warps_issue_stalled_lg_throttle,smsp__pcsamp_warps_issue_stalled_tex_throttle,smsp__pcsamp_warps_issue_stalled_membar,smsp__pcsamp_warps_issue_stalled_imc_miss,smsp__pcsamp_warps_issue_stalled_no_instructions,smsp__pcsamp_warps_issue_stalled_drain,smsp__pcsamp_warps_issue_stalled_sleeping,smsp__pcsamp_warps_issue_stalled_branch_resolving \
      "$B/sharq" "${args[@]}" --schemes fp16 >"$OUT/ncu_prefill_attention.txt" 2>&1
  grep -vE "^==PROF==|^\s*$|----" "$OUT/ncu_prefill_attention.txt" | grep -E "Duration|Throughput|Pipe|Warp Cycles|Issued|Occupancy|Registers|Eligible|Active Warps|Shared Memory|pcsamp|stall|Block Limit|Bank" | head -70
fi
