#!/usr/bin/env bash
# Prepared in the twenty-fifth session, for the next (not run: no device time came after
# call1). Two calls' worth; carry .whl. Logs under $OUT.
#
#   bash benchmarks/2026-12-08-s25/next_call.sh a   every GPU test (the split-MMA down_backward
#       and _ws_gemm's tests are new to the GPU), ws_gemm.py, then micro3 as shipped
#   bash benchmarks/2026-12-08-s25/next_call.sh b   the 8-layer model suite as shipped, then
#       micro3 with _ws_gemm switched on
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
case ${1:-a} in
    a)
        timeout 230 bash tools/gpu_session.sh tests
        grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
        PYTHONPATH="$src:$PWD:$PWD/tools" timeout 110 \
            python3 benchmarks/2026-12-08-s25/ws_gemm.py 2>&1 | tee "$OUT/ws_gemm.txt"
        timeout 250 bash tools/gpu_session.sh micro3
        tail -12 "$OUT/micro3/log.txt"
        ;;
    b)
        timeout 280 bash tools/gpu_session.sh model
        tail -12 "$OUT/model/log.txt"
        mkdir -p "$OUT/micro3_ws"  # the peers' wheels are in /tmp/site now
        PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools" timeout 280 python3 tools/bench.py \
            --suite micro --ranks 16 --repeat 3 --ws-gemm --out "$OUT/micro3_ws" \
            >"$OUT/micro3_ws/log.txt" 2>&1
        tail -12 "$OUT/micro3_ws/log.txt"
        ;;
esac
