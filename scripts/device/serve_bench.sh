#!/usr/bin/env bash
# On the GPU machine: `sharq serve --synthetic` per scheme, driven by `sharq bench serve` over
# loopback with the serving issue's protocol (docs/perf/serve.md). One CSV for the whole run.
# Usage: scripts/device/serve_bench.sh [SCHEMES="fp16 fp8 nvfp4 sharq"] [BURST=500] [MODEL=llama3.1-8b]
# [ONLY_BURST=1] (environment variables). Needs a built $BUILD/sharq (scripts/device/gpu_check.sh builds it).
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
SCHEMES=${SCHEMES:-"fp16 fp8 nvfp4 sharq"}
BURST=${BURST:-500}
MODEL=${MODEL:-llama3.1-8b}
CSV="$OUT/serve_bench.csv"
mkdir -p "$OUT"
port=18000
for s in $SCHEMES; do
  port=$((port + 1))
  log="$OUT/serve_${s//:/_}.log"
  t0=$SECONDS
  "$B/sharq" serve --synthetic "$MODEL" --device cuda --scheme "$s" --port $port --max-model-len 2304 \
    --max-num-seqs 256 --max-queue 1024 >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do grep -q "serving" "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
  if ! grep -q "serving" "$log"; then echo "$s: the server did not start"; tail -5 "$log"; kill $pid 2>/dev/null; continue; fi
  echo "$s: serving after $((SECONDS - t0)) s"
  run() {  # label, then bench serve options
    local label=$1; shift
    "$B/sharq" bench serve --url "http://127.0.0.1:$port" --label "$s/$label" --csv "$CSV" --timeout 300 "$@" \
      >"$OUT/bench_${s//:/_}_$label.txt" 2>&1
    echo "  $label rc=$? $(grep -E '^completed|^TTFT|^TPOT' "$OUT/bench_${s//:/_}_$label.txt" | tr -s ' ' | tr '\n' ';')"
  }
  run warmup --num-prompts 4 --input-len 64 --output-len 16 --max-concurrency 4
  if [[ ${ONLY_BURST:-0} != 1 ]]; then
    run c1_1024_128 --num-prompts 6 --input-len 1024 --output-len 128 --max-concurrency 1
    run c1_128_1024 --num-prompts 2 --input-len 128 --output-len 1024 --max-concurrency 1
    run c8_128_1024 --num-prompts 16 --input-len 128 --output-len 1024 --max-concurrency 8
    run c32_128_1024 --num-prompts 32 --input-len 128 --output-len 1024 --max-concurrency 32
    run c8_1024_128 --num-prompts 32 --input-len 1024 --output-len 128 --max-concurrency 8
    # the server's overhead at concurrency 32 with bench model's context (32 / ITL p50 vs its b32)
    run c32_1024_128 --num-prompts 32 --input-len 1024 --output-len 128 --max-concurrency 32
    run c32_1024_512 --num-prompts 32 --input-len 1024 --output-len 512 --max-concurrency 32
  fi
  [[ $BURST -gt 0 ]] && run burst${BURST}_1024_128 --num-prompts $BURST --input-len 1024 --output-len 128
  python3 -c "import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$port/metrics').read().decode())" \
    >"$OUT/metrics_${s//:/_}.txt" 2>&1
  kill -TERM $pid; wait $pid; echo "  server exit $?"
done
