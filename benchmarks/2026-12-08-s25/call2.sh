#!/usr/bin/env bash
# Twenty-fifth session, second GPU call: down_backward with its MMA partition split in two
# warpgroups (split_mma.py's kernel, now shipped): every GPU test, gluon_dx_pairs.py (o's,
# q/k/v's and gate/up's input gradients over the split MMA partitions), then the micro suite
# (r = 16, median of 3), which the device time left may cut off (its log keeps each row). Carry .whl. Logs under $OUT.
set -uo pipefail
export OUT
timeout 260 bash tools/gpu_session.sh tests
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
PYTHONPATH="$src:$PWD:$PWD/tools" timeout 70 python3 benchmarks/2026-12-08-s25/gluon_dx_pairs.py 2>&1 |
    tee "$OUT/gluon_dx_pairs.txt"
timeout 280 bash tools/gpu_session.sh micro3
tail -12 "$OUT/micro3/log.txt"
