#!/usr/bin/env bash
# Forces every kernel config of `w4a16 info` through `w4a16 verify` on a few odd shapes and prints
# one line per failure (configs whose split-K exceeds a shape's k-blocks are rejected by design and
# counted separately). Usage: tools/verify-configs.sh path/to/w4a16
set -uo pipefail
W4A16=${1:-build/w4a16}
pass=0 fail=0 rejected=0
for config in $("$W4A16" info | awk '/(ms|st|ws)_|dequant_cublas/ {print $2}'); do
  for shape in "17 1040 320 32" "3 80 192 64" "130 256 4096 4096" "1 4096 11008 128"; do
    set -- $shape
    out=$("$W4A16" verify --m $1 --n $2 --k $3 --group $4 --bias --alpha 0.5 --config "$config" 2>&1)
    if grep -q PASS <<<"$out"; then pass=$((pass + 1))
    elif grep -q "exceeds the k / 64" <<<"$out"; then rejected=$((rejected + 1))
    else fail=$((fail + 1)); echo "FAIL $config m=$1 n=$2 k=$3 g=$4: $(tail -n 1 <<<"$out")"; fi
  done
done
echo "verify-configs: $pass passed, $fail failed, $rejected rejected (split-K > k-blocks)"
[ "$fail" -eq 0 ]
