#!/usr/bin/env bash
# Twenty-fifth session, second GPU call: down_backward with its MMA partition split in two
# warpgroups (split_mma.py's kernel, now shipped): every GPU test, then the micro suite (r = 16,
# median of 3). Carry .whl. Logs under $OUT.
set -uo pipefail
export OUT
timeout 560 bash tools/gpu_session.sh tests micro3
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
tail -24 "$OUT/micro3/log.txt"
