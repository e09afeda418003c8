#!/usr/bin/env bash
# Build sharq (Release) and run the operator-level study on its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build --target sharq_cli
./build/sharq opcheck "$@"
