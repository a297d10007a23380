#!/usr/bin/env bash
# Packs deps/ (tools/install-deps.sh) into .carry/deps.tgz, small enough to travel with the working
# tree to an offline GPU machine, where tools/gpu-check.sh unpacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d deps ] || tools/install-deps.sh
mkdir -p .carry
tar czf .carry/deps.tgz --exclude='deps/cutlass/cutlass_cppgen' --exclude='deps/cutlass/pycute' \
  --exclude='deps/cutlass/cutlass_library/source/examples' --exclude='deps/pytest' deps
ls -la .carry/deps.tgz
