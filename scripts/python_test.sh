#!/usr/bin/env bash
# Runs the Python module's pytest suite against a configured build (BUILD/python/sharq*.so).
# Exit status: pytest's, except that "no tests collected" (5) is a failure too, and a build
# without the module (pybind11 or NumPy missing, SHARQ_PYTHON=OFF) is reported and skipped.
# Usage: scripts/python_test.sh BUILD_DIR
set -uo pipefail
cd "$(dirname "$0")/.."
build=$(cd "${1:?usage: scripts/python_test.sh BUILD_DIR}" && pwd)
py=$(grep -E '^Python3_EXECUTABLE:' "$build/CMakeCache.txt" 2>/dev/null | cut -d= -f2)
[ -n "$py" ] || py=python3
if ! ls "$build"/python/sharq*.so >/dev/null 2>&1; then
  echo "sharq: the Python module was not built in $build (pybind11 / NumPy not found, or SHARQ_PYTHON=OFF): pytest skipped"
  exit 0
fi
SHARQ_CLI="$build/sharq" PYTHONPATH="$build/python" "$py" -m pytest -q -p no:cacheprovider tests/python
rc=$?
if [ $rc -eq 5 ]; then echo "sharq: pytest collected no tests" >&2; exit 1; fi
exit $rc
