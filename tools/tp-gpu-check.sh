#!/usr/bin/env bash
# Tensor-parallel checks on a GPU machine (offline is fine; about 2-4 minutes with a fresh build):
# builds the Python extension as tools/python-gpu-check.sh does (same build folder, so either
# script reuses the other's build), then
#   1. pytest python/tests/test_sharding.py  (the CPU sharding rules, and W4A16Linear.shard on the GPU)
#   2. examples/tensor_parallel_mlp.py --simulate               (2 ranks in sequence on one GPU)
#   3. examples/tensor_parallel_mlp.py --simulate --act-order   (down_proj's permutation folded)
#   4. with 2 or more GPUs: torchrun --nproc-per-node 2 examples/tensor_parallel_mlp.py [--act-order]
#      (the 2-GPU check and timing); with one GPU the summary says they were not run.
# A summary comes last. Needs python3 with torch, numpy and pytest.
#
#   tools/tp-gpu-check.sh
#   TP_ARGS="--dtype bf16 --zeros" tools/tp-gpu-check.sh   options for every example run
#   ARCHS="80;90a" ...                                     CUDA targets (default 90a)
#
# Files go to $OUT (else $BUILD/logs): build.log, pytest_sharding.log, tp_simulate{,_act_order}.log
# and .json, and on 2 GPUs tp_2gpu{,_act_order}.log and .json. NVLink multicast stays off
# (NCCL_NVLS_ENABLE=0, also set by the example itself).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
BUILD=${BUILD:-build-pygpu}
LOGS=${OUT:-$BUILD/logs}
PYTHON=${PYTHON:-python3}
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
mkdir -p "$LOGS"
summary=()
failures=0
record() { summary+=("$(printf '%-34s %s' "$1" "$2")"); }
started=$(date +%s)

if tools/build-python-extension.sh "$BUILD" "$LOGS/build.log"; then
  record "build" "ok ($(( $(date +%s) - started )) s)"
else
  exit 1
fi
export PYTHONPATH="$PWD/$BUILD/python${PYTHONPATH:+:$PYTHONPATH}"

# step NAME SECONDS LOG COMMAND...: runs it with a time limit, records rc and duration.
step() {
  local name=$1 seconds=$2 log=$3
  shift 3
  local step_start rc
  step_start=$(date +%s)
  timeout "$seconds" "$@" >"$LOGS/$log" 2>&1
  rc=$?
  record "$name" "rc=$rc ($(( $(date +%s) - step_start )) s)$([ "$rc" = 124 ] && echo ", timed out after $seconds s")"
  if [ "$rc" != 0 ]; then
    failures=$((failures + 1))
    tail -n 25 "$LOGS/$log"
  fi
}

step "pytest test_sharding.py" 120 pytest_sharding.log \
  "$PYTHON" -m pytest -v -rs -p no:cacheprovider python/tests/test_sharding.py
# shellcheck disable=SC2086  # TP_ARGS is a list of options
step "simulate (1 GPU, 2 ranks)" 150 tp_simulate.log \
  "$PYTHON" examples/tensor_parallel_mlp.py --simulate --json "$LOGS/tp_simulate.json" ${TP_ARGS:-}
# shellcheck disable=SC2086
step "simulate --act-order" 150 tp_simulate_act_order.log \
  "$PYTHON" examples/tensor_parallel_mlp.py --simulate --act-order --json "$LOGS/tp_simulate_act_order.json" \
  ${TP_ARGS:-}

gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
if [ "$gpus" -ge 2 ]; then
  # torch.distributed.run is torchrun, without relying on the script being on PATH.
  # shellcheck disable=SC2086
  step "torchrun 2 GPUs" 180 tp_2gpu.log \
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 examples/tensor_parallel_mlp.py \
    --json "$LOGS/tp_2gpu.json" ${TP_ARGS:-}
  # shellcheck disable=SC2086
  step "torchrun 2 GPUs --act-order" 180 tp_2gpu_act_order.log \
    "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 2 examples/tensor_parallel_mlp.py \
    --act-order --json "$LOGS/tp_2gpu_act_order.json" ${TP_ARGS:-}
else
  record "torchrun 2 GPUs" "NOT RUN: this machine has $gpus GPU(s); the 2-GPU check and timing need 2"
fi

echo
echo "==== tp-gpu-check summary ($(date -u +%FT%TZ), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) x $gpus, $(( $(date +%s) - started )) s) ===="
printf '%s\n' "${summary[@]}"
echo "pytest: $(tail -n 1 "$LOGS/pytest_sharding.log" 2>/dev/null | tr -d '=' | sed 's/^ *//')"
for log in tp_simulate tp_simulate_act_order tp_2gpu tp_2gpu_act_order; do
  [ -f "$LOGS/$log.log" ] || continue
  echo
  echo "---- $log"
  # The checks and the tables: everything from the first check line on, without the file notices.
  sed -n '/^check batch/,$p' "$LOGS/$log.log" | grep -v '^wrote '
done
exit $(( failures > 0 ))
