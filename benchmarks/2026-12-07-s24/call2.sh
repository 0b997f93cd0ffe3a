#!/usr/bin/env bash
# Twenty-fourth session, call 2: down_backward's time split (kernel, dA) and SM clocks under
# sustained replay (split.py), ncu's speed-of-light of each kernel, then the 32-layer model
# suite. Logs under $OUT.
set -uo pipefail
export OUT
bash tools/gpu_session.sh compile | tail -2  # installs the carried wheels too
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
s=benchmarks/2026-12-07-s24
timeout 150 python3 $s/split.py >"$OUT/split.txt" 2>&1; echo "split rc $?"; cat "$OUT/split.txt"
timeout 150 ncu --clock-control none --section SpeedOfLight python3 $s/ncu_split.py \
    >"$OUT/ncu_split.txt" 2>&1
echo "ncu rc $?"
grep -E "^  [^ ]|SM Frequency|Duration|Compute \(SM\)|DRAM Through" "$OUT/ncu_split.txt" | tail -40
bash tools/gpu_session.sh model32
tail -12 "$OUT/model32/log.txt"
