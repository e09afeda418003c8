#!/usr/bin/env bash
# On the GPU machine: `sharq serve --device cuda` on a real checkpoint, then the soak test
# (scripts/device/serve_soak.py: 1,000 requests, cancellations and malformed ones mixed in), then
# SIGTERM. Needs a built $BUILD/sharq.
# Usage: scripts/device/serve_soak.sh [MODEL_DIR | synthetic:NAME] [SCHEME]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
B=${BUILD:-build-gpu}
MODEL=${1:-../shared/models/sharq-lm-30m}
SCHEME=${2:-sharq}
mkdir -p "$OUT"
source scripts/device/carried_shared.sh unpack  # local/shared (and local/ship) -> ../shared
port=18100
log="$OUT/soak_server.log"
if [[ $MODEL == synthetic:* ]]; then src=(--synthetic "${MODEL#synthetic:}"); else src=("$MODEL"); fi
# a small KV pool (160 blocks of 16 positions) so that preemption runs under the load
"$B/sharq" serve "${src[@]}" --device cuda --scheme "$SCHEME" --port $port --max-model-len 1024 --max-num-seqs 32 \
  --kv-blocks ${KV_BLOCKS:-160} --max-queue 1024 >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 300); do grep -q "serving" "$log" && break; kill -0 $pid 2>/dev/null || break; sleep 0.2; done
grep -q "serving" "$log" || { echo "soak: the server did not start"; tail -5 "$log"; exit 1; }
python3 scripts/device/serve_soak.py --url "http://127.0.0.1:$port" --n ${N:-1000} --concurrency ${CONC:-64} \
  --vocab 256 --max-model-len 1024 2>&1 | tee "$OUT/soak.txt"
rc=${PIPESTATUS[0]}
kill -TERM $pid; wait $pid; echo "soak: server exit $? after SIGTERM; soak rc=$rc"
exit $rc
