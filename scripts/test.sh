#!/usr/bin/env bash
# Build and run every CPU unit test twice: Release, then an ASan + UBSan build.
# GPU tests (ctest label `gpu`) skip themselves where there is no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
jobs=$(nproc)

# The Python module is required here (deps.sh installs pybind11 and NumPy); Debian's interpreter
# is the one with python3-numpy, whatever python3 comes first in PATH.
pyopt=(-DSHARQ_PYTHON=ON)
if [ -x /usr/bin/python3 ]; then pyopt+=(-DPython3_EXECUTABLE=/usr/bin/python3); fi
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "${pyopt[@]}" >/dev/null
cmake --build build -j "$jobs"
(cd build && ctest --output-on-failure -j "$jobs" --timeout 600)
# the installed package: cmake --install + a find_package consumer + a pkg-config consumer
scripts/consumer_test.sh build
# the Python module's suite (built when pybind11 and NumPy are found; Debian's python3 has NumPy)
scripts/python_test.sh build

# -O1 -g1 (line tables: file:line in the sanitizers' stack traces): on a 2-core host this build took
# 8 min 51 s against 19 min 33 s at RelWithDebInfo's -O2 -g, and its tests ran no slower (368 s
# against 462 s), the same 1057 passed (docs/test-runs.md, 2026-12-02)
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" \
  -DSHARQ_SANITIZE=ON -DSHARQ_BUILD_BENCH=OFF -DSHARQ_CUDA=OFF >/dev/null
cmake --build build-asan -j "$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
   ctest --output-on-failure -j "$jobs" --timeout 900)
# libFuzzer targets of the checkpoint parsers, a bounded time each (skips cleanly without clang)
scripts/fuzz.sh "${SHARQ_FUZZ_SECONDS:-20}"
echo "sharq: all tests passed (Release, ASan+UBSan, fuzz)"
