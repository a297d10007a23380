#!/usr/bin/env bash
# One-call check on a GPU machine: build, run every test (GPU tests included), compute-sanitizer
# memcheck, racecheck, initcheck and synccheck on the GPU tests (filtered to fit one call), `w4a16 verify` on the seed's shapes
# and on every checkpoint fixture (imported first), optionally the
# benchmark; the short summary table comes last. Logs go to $OUT (or build-gpu/logs).
#
#   tools/gpu-check.sh                 build + tests + sanitizers + verify
#   BENCH=quick tools/gpu-check.sh     ... + `w4a16 bench --shapes quick`
#   BENCH=default JSON=bench/results/h100.json tools/gpu-check.sh   ... + the full benchmark
#   PROBE=1 tools/gpu-check.sh         ... + the decode access-pattern probe (bench/probes/)
#   SANITIZE=0 / TESTS=0 / CTEST=0 / VERIFY=0 skip those steps (CTEST=0 SANITIZE=1: sanitizers only);
#   TARGETS="w4a16_gpu_tests w4a16_cli" builds only those.
#
# Offline machines: carry deps as .carry/deps.tgz (tools/make-carry.sh) and this script unpacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-gpu}
LOGS=${OUT:-$BUILD/logs}
mkdir -p "$LOGS"
JOBS=$(nproc)
summary=()
record() { summary+=("$(printf '%-44s %s' "$1" "$2")"); }

if [ ! -d deps ] && [ -f .carry/deps.tgz ]; then tar xzf .carry/deps.tgz; fi
[ -d deps ] || tools/install-deps.sh

tests_flag=ON
[ "${TESTS:-1}" = 0 ] && tests_flag=OFF
# The Python extension is off here unless PYTHON=1 (its CPU tests run in CI; the offline machine
# carries no numpy/pytest).
if cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DW4A16_BUILD_TESTS=$tests_flag \
     -DW4A16_BUILD_PYTHON=$([ "${PYTHON:-0}" = 1 ] && echo ON || echo OFF) >"$LOGS/build.log" 2>&1 &&
   cmake --build "$BUILD" -j "$JOBS" ${TARGETS:+--target $TARGETS} >>"$LOGS/build.log" 2>&1; then
  record "build" "ok"
else
  tail -n 40 "$LOGS/build.log"
  echo "BUILD FAILED"; exit 1
fi
W4A16="$BUILD/w4a16"
# (Logs stay at 8 files or fewer: the device tool returns no more.)
"$W4A16" info | head -n 7

if [ "$tests_flag" = ON ]; then
  # -j 6: the GPU tests share the device well, and most of their time is the CPU reference.
  if [ "${CTEST:-1}" = 1 ]; then
    if ctest --test-dir "$BUILD" -j 6 --output-on-failure >"$LOGS/ctest.log" 2>&1; then r=ok; else r=FAILED; fi
    record "ctest" "$r: $(grep -E 'tests passed|tests failed' "$LOGS/ctest.log" | tail -n 1)"
    record "ctest skipped" "$(grep -c 'Skipped' "$LOGS/ctest.log")"
  fi
  if [ "${SANITIZE:-1}" = 1 ]; then
    # memcheck: every config in every format on three shapes (group 32, 64, 128; bf16 at 3e4),
    # determinism, validation, graphs, PDL and one default-config shape; the whole suite under
    # memcheck no longer fits one 10-minute call since the formats multiplied it by four
    # (MEMCHECK_FILTER='*' runs it all). racecheck: our kernels only, every config in every format
    # on two shapes; cuBLAS's own kernels trip racecheck's heuristics and are not ours to fix. The
    # two run side by side.
    # One compute-sanitizer tool over a test filter, in the background; FAMILIES (optional)
    # restricts the every-config loops to those families.
    declare -A pids
    # Each tool gets at most SANITIZE_SECONDS (default 420) so that its summary line still comes
    # back inside one device call; a tool cut short reports "timed out" instead of a count.
    sanitize() {  # tool filter [families]
      W4A16_TEST_FAMILY="${3:-}" timeout "${SANITIZE_SECONDS:-420}" compute-sanitizer --tool "$1" --error-exitcode 9 \
        "$BUILD/tests/w4a16_gpu_tests" --gtest_filter="$2" >"$LOGS/$1.log" 2>&1 &
      pids[$1]=$!
    }
    ours=multistage,warp_specialized,streaming
    sanitize memcheck "${MEMCHECK_FILTER:-*EveryConfig*m17_*:*EveryConfig*m65_*:*EveryConfig*_large:*BitIdentical*:*Invalid*:*Graph*:*Programmatic*:*DefaultConfig*n1040_k320*:*ActOrder*:*Concurrency*:*CublasLt*}"
    sanitize racecheck "${RACECHECK_FILTER:-*EveryConfig*m17_*:*EveryConfig*m65_*:*ActOrder*}" "$ours"
    # initcheck (reads of uninitialized device memory) and synccheck (barrier misuse): every
    # config in every format on one shape, our kernels only.
    sanitize initcheck "${INITCHECK_FILTER:-*EveryConfig*m17_*:*ActOrder*}" "$ours"
    sanitize synccheck "${SYNCCHECK_FILTER:-*EveryConfig*m17_*:*ActOrder*}" "$ours"
    for tool in memcheck racecheck initcheck synccheck; do
      wait "${pids[$tool]}"
      rc=$?
      if [ $rc = 124 ]; then verdict="timed out after ${SANITIZE_SECONDS:-420} s"; else
        verdict="$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOGS/$tool.log" | tail -n 1)"; fi
      record "compute-sanitizer $tool" "rc=$rc: $verdict $(grep -cE '^\[       OK \]' "$LOGS/$tool.log") tests ok"
    done
  fi
fi

# One log for every verify run (the device tool returns at most 8 files).
: >"$LOGS/verify.log"
[ "${VERIFY:-1}" = 1 ] && for shape in "1 4096 4096" "1 11008 4096" "32 4096 4096" "128 4096 4096" "4096 28672 8192"; do
  set -- $shape
  for format in "--dtype fp16" "--dtype bf16 --zeros" "--dtype fp16 --float-zeros"; do
    if "$W4A16" verify --m $1 --n $2 --k $3 --group 128 $format >"$LOGS/verify_one.log" 2>&1; then r=PASS; else r=FAIL; fi
    cat "$LOGS/verify_one.log" >>"$LOGS/verify.log"
    record "verify ${1}x${2}x${3} g128 ${format//--/}" "$r $(grep -oE 'relative error \(Frobenius\) [0-9.e+-]+' "$LOGS/verify_one.log")"
  done
done
rm -f "$LOGS/verify_one.log"

# Every checkpoint fixture (written by the formats' own packers), imported and verified on the
# GPU at m = 1, 17 and 300 (issue 15's acceptance); one log line per layer run in verify.log.
if [ "${VERIFY:-1}" = 1 ] && [ -d tests/fixtures/checkpoints ]; then
  containers=$(mktemp -d)
  passed=0 failed=0
  for dir in tests/fixtures/checkpoints/*/; do
    name=$(basename "$dir")
    if ! "$W4A16" import --in "$dir" --out "$containers/$name.safetensors" >>"$LOGS/verify.log" 2>&1; then
      failed=$((failed + 1)); echo "import $name FAILED" >>"$LOGS/verify.log"; continue
    fi
    for m in 1 17 300; do
      if "$W4A16" verify --checkpoint "$containers/$name.safetensors" --m $m >>"$LOGS/verify.log" 2>&1; then
        passed=$((passed + 1)); else failed=$((failed + 1)); echo "verify $name m=$m FAILED" >>"$LOGS/verify.log"; fi
    done
  done
  rm -rf "$containers"
  record "verify --checkpoint (fixtures x m 1,17,300)" "$passed passed, $failed failed"
fi

# PROBE=1: the decode access-pattern probe (bench/probes/read_patterns.cu, bench/NOTES.md entry 30),
# a standalone program: the packed weights read in the streaming tiles' patterns, no math.
# Its table goes to stdout and to the end of verify.log (the device tool returns at most 8 files).
if [ "${PROBE:-0}" = 1 ]; then
  echo "==== bench/probes/read_patterns.cu ====" >>"$LOGS/verify.log"
  if nvcc -O3 -arch=sm_90a -o "$BUILD/read_patterns" bench/probes/read_patterns.cu >>"$LOGS/verify.log" 2>&1 &&
     "$BUILD/read_patterns" 2>&1 | tee -a "$LOGS/verify.log"; then r=ok; else r=FAILED; fi
  record "probe read_patterns" "$r ($(grep -c 'of floor' "$LOGS/verify.log") patterns, in verify.log)"
fi

if [ -n "${BENCH:-}" ]; then
  json_args=()
  [ -n "${JSON:-}" ] && json_args=(--json "$JSON")
  "$W4A16" bench --shapes "$BENCH" "${json_args[@]}" ${BENCH_ARGS:-} 2>&1 | tee "$LOGS/bench_$BENCH.log"
  record "bench $BENCH" "rc=${PIPESTATUS[0]}"
fi

echo
echo "==== gpu-check summary ($(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)) ===="
printf '%s\n' "${summary[@]}"
