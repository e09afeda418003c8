#!/usr/bin/env bash
# On the GPU machine: build the CLI and the engine test, run the test, then `sharq ppl` and
# `sharq generate` with --device cuda on the shared models (copied into ../shared when the caller
# carried them in local/shared). Logs and results in $OUT (or ./gpu-out).
# Usage: scripts/device/engine_check.sh [--whole-file]
set -uo pipefail
OUT=${OUT:-$PWD/gpu-out}
BUILD=${BUILD:-build-gpu}
mkdir -p "$OUT"
source scripts/device/carried_shared.sh unpack  # local/shared (and local/ship) -> ../shared
S=../shared
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHARQ_BUILD_BENCH=OFF >"$OUT/configure.log" 2>&1 || { tail -20 "$OUT/configure.log"; exit 1; }
ninja -C "$BUILD" sharq_cli engine_test >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; exit 1; }
"$BUILD/tests/engine_test" >"$OUT/engine_test.log" 2>&1; echo "engine_test rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/engine_test.log" | tr '\n' ' ')"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/env.txt"
run() { local name=$1; shift; local t0; t0=$(date +%s%N); "$BUILD/sharq" "$@" >"$OUT/$name.txt" 2>"$OUT/$name.err"; local rc=$?;
        echo "== $name rc=$rc $(( ($(date +%s%N) - t0) / 1000000 )) ms"; cat "$OUT/$name.txt"; tail -3 "$OUT/$name.err"; }
run ppl_stories_tinystories ppl "$S/models/stories260K/stories260K.bin" --data "$S/data/tinystories/sample.txt" --ctx 256 -q \
    --device cuda --schemes fp16,bf16,fp8,w4a16,nvfp4:tensor,sharq:tensor,nvfp4,sharq,sharq:merged
run ppl_lm30m_wiki64 ppl "$S/models/sharq-lm-30m" --data "$S/data/wikitext2/wiki.test.txt" --ctx 512 --max-windows 64 -q \
    --device cuda --schemes fp16,bf16,fp8,w4a16,nvfp4:tensor,sharq:tensor,nvfp4,sharq,sharq:merged,sharq:s24
if [[ "${1:-}" == "--whole-file" ]]; then
  run ppl_lm30m_wiki_all ppl "$S/models/sharq-lm-30m" --data "$S/data/wikitext2/wiki.test.txt" --ctx 512 -q \
      --device cuda --schemes fp16,bf16,fp8,w4a16,nvfp4,sharq,sharq:merged,sharq:s24
fi
run generate_lm30m generate "$S/models/sharq-lm-30m" --device cuda --scheme sharq -p "Once upon a time" -n 64 --stats
cat "$OUT/generate_lm30m.err"
