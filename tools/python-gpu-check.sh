#!/usr/bin/env bash
# The Python layer on a GPU machine (offline is fine): builds the extension, runs the whole pytest
# suite (the GPU tests of w4a16.torch included), then bench/op_overhead.py and bench/llama_layer.py;
# a short summary comes last. Needs python3 with torch, numpy and pytest (matplotlib for the PNG);
# nanobind comes from deps/ or the interpreter.
#
#   tools/python-gpu-check.sh              build + pytest + both benchmarks
#   BENCH=0 tools/python-gpu-check.sh      build + pytest
#   LLAMA_ARGS="--dtype bf16 --zeros" ...  options for bench/llama_layer.py
#   ARCHS="80;90a" ...                     CUDA targets (default 90a, the H100/H200 this runs on:
#                                          one target builds faster than the default two)
#
# It builds with CMake rather than `pip install .`: the build folder persists between runs (an
# incremental rebuild takes seconds), a failing build leaves its log, and nothing is installed
# into the interpreter. Files go to $OUT (else $BUILD/logs), at most six: build.log, pytest.log,
# op_overhead.log, llama_layer.log, llama_layer.json, llama_layer.png.
# Offline machines: carry deps as .carry/deps.tgz (tools/make-carry.sh) and this script unpacks it.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build-pygpu}
LOGS=${OUT:-$BUILD/logs}
PYTHON=${PYTHON:-python3}
mkdir -p "$LOGS"
summary=()
record() { summary+=("$(printf '%-28s %s' "$1" "$2")"); }
failures=0  # steps that failed: the script's exit status
started=$(date +%s)

if tools/build-python-extension.sh "$BUILD" "$LOGS/build.log"; then
  record "build" "ok ($(( $(date +%s) - started )) s)"
else
  exit 1
fi
export PYTHONPATH="$PWD/$BUILD/python${PYTHONPATH:+:$PYTHONPATH}"
# Inductor's compiled kernels persist between runs on a warm machine.
export TORCHINDUCTOR_CACHE_DIR="$PWD/$BUILD/inductor-cache"
if "$PYTHON" -c "import torch, w4a16.torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())" \
     >>"$LOGS/build.log" 2>&1; then
  record "import w4a16.torch" "ok: $(tail -n 1 "$LOGS/build.log")"
else
  record "import w4a16.torch" "FAILED (see build.log)"; failures=$((failures + 1))
  tail -n 20 "$LOGS/build.log"
fi

# The whole suite: the CPU tests of the host tools and the GPU tests of w4a16.torch.
step_start=$(date +%s)
timeout "${PYTEST_SECONDS:-240}" "$PYTHON" -m pytest -v -rs -p no:cacheprovider python/tests >"$LOGS/pytest.log" 2>&1
rc=$?
record "pytest" "rc=$rc: $(tail -n 1 "$LOGS/pytest.log" | tr -d '=' | sed 's/^ *//') ($(( $(date +%s) - step_start )) s)"
[ "$rc" = 0 ] || { failures=$((failures + 1)); grep -E '^(FAILED|ERROR)' "$LOGS/pytest.log" | head -n 20; }

if [ "${BENCH:-1}" != 0 ]; then
  step_start=$(date +%s)
  timeout 120 "$PYTHON" bench/op_overhead.py >"$LOGS/op_overhead.log" 2>&1
  rc=$?
  record "bench/op_overhead.py" "rc=$rc ($(( $(date +%s) - step_start )) s)"
  [ "$rc" = 0 ] || { failures=$((failures + 1)); tail -n 15 "$LOGS/op_overhead.log"; }  # rc 1 with a table: the 2 us limit was missed
  step_start=$(date +%s)
  # shellcheck disable=SC2086  # LLAMA_ARGS is a list of options
  timeout 150 "$PYTHON" bench/llama_layer.py --json "$LOGS/llama_layer.json" --png "$LOGS/llama_layer.png" \
    ${LLAMA_ARGS:-} >"$LOGS/llama_layer.log" 2>&1
  rc=$?
  record "bench/llama_layer.py" "rc=$rc ($(( $(date +%s) - step_start )) s)"
  [ "$rc" = 0 ] || { failures=$((failures + 1)); tail -n 15 "$LOGS/llama_layer.log"; }
fi

echo
echo "==== python-gpu-check summary ($(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1), $(( $(date +%s) - started )) s) ===="
printf '%s\n' "${summary[@]}"
if [ "${BENCH:-1}" != 0 ]; then
  echo
  sed -n '/^Per-call us/,$p' "$LOGS/op_overhead.log"
  echo
  sed -n '/^Llama-3-8B decoder layer/,/^wrote/p' "$LOGS/llama_layer.log" | grep -v '^wrote'
fi
[ "$failures" = 0 ]
