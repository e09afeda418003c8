#!/usr/bin/env bash
# Installs a configured sharq build into a scratch prefix and builds two external consumers against
# the installed files only: a CMake project (find_package(sharq)) and a plain compile with
# pkg-config. Both run tests/consumer/consumer.cpp (a SharQ linear checked against the library's
# reference). Usage: scripts/consumer_test.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/consumer_test.sh BUILD_DIR}
build=$(cd "$build" && pwd)
prefix="$build/consumer-prefix"
rm -rf "$prefix" "$build/consumer-cmake" "$build/consumer-pc"
cmake --install "$build" --prefix "$prefix" >/dev/null
# the package must be self-contained: nothing from the source tree on the include path
cmake -S tests/consumer -B "$build/consumer-cmake" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
cmake --build "$build/consumer-cmake" >/dev/null
"$build/consumer-cmake/consumer"
mkdir -p "$build/consumer-pc"
pcdir="$prefix/lib/pkgconfig"
[ -d "$pcdir" ] || pcdir=$(dirname "$(find "$prefix" -name sharq.pc | head -1)")
static=""
ls "$prefix"/lib*/libsharq.so* >/dev/null 2>&1 || ls "$prefix"/lib/*/libsharq.so* >/dev/null 2>&1 || static="--static"
# shellcheck disable=SC2046
g++ -std=c++20 -O2 tests/consumer/consumer.cpp -o "$build/consumer-pc/consumer" \
  $(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs $static sharq)
# a shared libsharq in a non-system prefix is found at run time the usual way (pkg-config sets no rpath)
LD_LIBRARY_PATH="$(PKG_CONFIG_PATH="$pcdir" pkg-config --variable=libdir sharq)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  "$build/consumer-pc/consumer"
echo "sharq: consumers (find_package, pkg-config) passed against $prefix"
