#!/usr/bin/env bash
# Twenty-fifth session, second GPU call: down_backward with its MMA partition split in two
# warpgroups (split_mma.py's kernel, now shipped): every GPU test, the micro suite (r = 16,
# median of 3), gluon_dx.py over the split MMA partitions, then the QKV and MLP kernel
# tables. Carry .whl. Logs under $OUT.
set -uo pipefail
export OUT
timeout 465 bash tools/gpu_session.sh tests micro3
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -8
tail -12 "$OUT/micro3/log.txt"
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
PYTHONPATH="$src:$PWD:$PWD/tools" timeout 55 python3 benchmarks/2026-12-07-s24/gluon_dx.py 2>&1 |
    tee "$OUT/gluon_dx.txt"
timeout 60 bash tools/gpu_session.sh profile
grep -v "^\s*$" "$OUT/profile/log.txt" | tail -40
