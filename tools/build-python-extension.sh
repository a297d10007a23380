#!/usr/bin/env bash
# Builds the Python extension alone (the C++ tests and the CLI have tools/gpu-check.sh) into BUILD
# for PYTHON, the way tools/python-gpu-check.sh and tools/tp-gpu-check.sh both use it (one build
# folder, so either script reuses the other's build); the log goes to LOG. Unpacks .carry/deps.tgz
# on an offline machine. On failure prints the log's tail and exits non-zero.
#
#   tools/build-python-extension.sh BUILD LOG     (ARCHS="80;90a": CUDA targets, default 90a)
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=$1
LOG=$2
PYTHON=${PYTHON:-python3}
if [ ! -d deps ] && [ -f .carry/deps.tgz ]; then tar xzf .carry/deps.tgz; fi
[ -d deps ] || tools/install-deps.sh
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${ARCHS:-90a}" \
     -DW4A16_BUILD_PYTHON=ON -DW4A16_BUILD_TESTS=OFF -DW4A16_BUILD_CLI=OFF \
     -DPython_EXECUTABLE="$(command -v "$PYTHON")" >"$LOG" 2>&1 &&
   cmake --build "$BUILD" -j "$(nproc)" >>"$LOG" 2>&1 &&
   ls "$BUILD"/python/w4a16/_w4a16*.so >/dev/null 2>&1; then
  exit 0
fi
tail -n 40 "$LOG"
echo "BUILD FAILED (is there a Python with headers, and nanobind in deps/python or the interpreter?)"
exit 1
