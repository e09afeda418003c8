#!/usr/bin/env bash
# Install sharq's Debian build dependencies (idempotent: packages already present are skipped).
set -euo pipefail
pkgs=(g++ cmake ninja-build pkg-config
      libgtest-dev libgmock-dev libbenchmark-dev
      libfmt-dev libcli11-dev nlohmann-json3-dev
      libpcre2-dev libutf8proc-dev libsentencepiece-dev
      libcpp-httplib-dev  # `sharq serve`: the HTTP server (optional at configure time)
      pybind11-dev python3-dev python3-numpy python3-pytest  # the Python module and its tests
      clang libclang-rt-14-dev)  # libFuzzer runs of the checkpoint parsers (scripts/fuzz.sh)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "sharq: installing Debian packages: ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
