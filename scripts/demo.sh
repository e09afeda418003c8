#!/usr/bin/env bash
# Build sharq (Release) and run the main job on embedded defaults:
#  1. `sharq opcheck`: one linear layer, every scheme, on the documented synthetic outlier input;
#  2. `sharq ppl` on a real model from ../shared: stories260K on the TinyStories sample, every
#     scheme, with the gap each SharQ variant recovers (skipped with a note if ../shared is absent).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target sharq_cli
./build/sharq opcheck
echo
shared=../shared
if [ -f "$shared/models/stories260K/stories260K.bin" ]; then
  ./build/sharq ppl "$shared/models/stories260K/stories260K.bin" --data "$shared/data/tinystories/sample.txt" --ctx 256 -q
else
  echo "sharq demo: $shared/models not found beside the checkout; skipping the model-level run"
fi
