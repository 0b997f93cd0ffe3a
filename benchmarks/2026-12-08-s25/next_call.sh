#!/usr/bin/env bash
# Prepared in the twenty-fifth session and rebalanced in the twenty-sixth (neither had device
# time for it). Three calls' worth, each under the 600 s limit; carry .whl. Logs under $OUT.
#
#   bash benchmarks/2026-12-08-s25/next_call.sh a   every GPU test (new to the GPU: the
#       split-MMA down_backward, its cached second launch, _ws_gemm's and its group's,
#       _ws_gated's; if one of _ws_gemm's fails, ws_diagnose.py's per-tile error grids),
#       ws_gemm.py, then host us per launch (the kept CompiledKernel against the JIT, the
#       Gluon kernels included)
#   bash benchmarks/2026-12-08-s25/next_call.sh b   micro3 as shipped, then micro3 with
#       _ws_gemm switched on: one instance, so the two compare
#   bash benchmarks/2026-12-08-s25/next_call.sh c   the 8-layer model suite as shipped, with
#       each variant's kernels in one profiled step (where lk-patch + Liger's step differs from
#       Axolotl + Liger's), then r = 16 and 128 micro with _ws_gemm on (no rank cap there;
#       _gemm gives r = 128 to cuBLAS)
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done

micro_ws() {  # micro_ws NAME TIMEOUT BENCH-ARGS...: tools/bench.py --suite micro --ws-gemm
    local name=$1 limit=$2
    shift 2
    mkdir -p "$OUT/$name"  # the peers' wheels are in /tmp/site after a gpu_session.sh step
    PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools" timeout "$limit" python3 tools/bench.py \
        --suite micro --ws-gemm --out "$OUT/$name" "$@" >"$OUT/$name/log.txt" 2>&1
    tail -16 "$OUT/$name/log.txt"
}

case ${1:-a} in
    a)
        timeout 290 bash tools/gpu_session.sh tests
        grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
        if grep -q "FAILED tests/autograd/test_ws_gemm.py" "$OUT/tests/log.txt"; then
            PYTHONPATH="$src:$PWD:$PWD/tools" timeout 50 \
                python3 benchmarks/2026-12-08-s26/ws_diagnose.py 2>&1 | tee "$OUT/ws_diagnose.txt"
        fi
        PYTHONPATH="$src:$PWD:$PWD/tools" timeout 110 \
            python3 benchmarks/2026-12-08-s25/ws_gemm.py 2>&1 | tee "$OUT/ws_gemm.txt"
        timeout 110 bash tools/gpu_session.sh launches
        cat "$OUT/launches/log.txt"
        ;;
    b)
        timeout 260 bash tools/gpu_session.sh micro3
        tail -12 "$OUT/micro3/log.txt"
        micro_ws micro3_ws 290 --ranks 16 --repeat 3
        ;;
    c)
        timeout 320 bash tools/gpu_session.sh model
        tail -40 "$OUT/model/log.txt"
        micro_ws micro_ws_r128 260 --ranks 16 128
        ;;
esac
