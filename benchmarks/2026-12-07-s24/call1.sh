#!/usr/bin/env bash
# Twenty-fourth session, call 1: the GPU tests at the shipped code, the epilogue variants
# (subtile rows, prefetch depth), ncu's full set with SASS-level stall samples of the shipped
# kernel, then the 8-layer model suite. Logs under $OUT.
set -uo pipefail
export OUT
bash tools/gpu_session.sh tests
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
s=benchmarks/2026-12-07-s24
timeout 150 python3 $s/epilogue_variants.py 5 >"$OUT/variants.txt" 2>&1; echo "variants rc $?"
tail -8 "$OUT/variants.txt"
rep=/tmp/down_ncu
timeout 200 ncu --clock-control none -k regex:^_kernel --launch-skip 2 --launch-count 1 \
    --set full --import-source no -o $rep python3 $s/ncu_target.py >"$OUT/ncu_log.txt" 2>&1
echo "ncu rc $?"; tail -3 "$OUT/ncu_log.txt"
ncu -i $rep.ncu-rep --page details >"$OUT/ncu_details.txt" 2>&1
ncu -i $rep.ncu-rep --page source --csv --print-source sass >"$OUT/ncu_sass.csv" 2>&1
ncu -i $rep.ncu-rep --page raw --csv >"$OUT/ncu_raw.csv" 2>&1
ls -la "$OUT"; grep -E "Duration|Throughput|Stall|Warp Cycles" "$OUT/ncu_details.txt" | head -20
bash tools/gpu_session.sh model
tail -12 "$OUT/model/log.txt"
