#!/usr/bin/env bash
# Twenty-third session, second GPU call: the code as shipped after call1 (row masks on, GELU and
# GELU-tanh through down_backward, the epilogue dA off, the fast sigmoid on): every GPU test,
# the compile check, the down kernel table for the three activations, then the micro suite
# (r = 16, median of 3). Carry .whl. Logs under $OUT.
set -uo pipefail
export OUT
timeout 400 bash tools/gpu_session.sh compile tests down_table micro3
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
tail -14 "$OUT/micro3/log.txt"
