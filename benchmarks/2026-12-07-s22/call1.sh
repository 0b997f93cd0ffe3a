#!/usr/bin/env bash
# Twenty-second session, the one GPU call: the down_backward GPU tests (row masks and the
# epilogue's dA are new), then the down kernel table. Logs under $OUT.
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="$src:$PWD:$PWD/tools"
nvidia-smi --query-gpu=name --format=csv,noheader
mkdir -p "$OUT/tests" "$OUT/down"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/autograd/test_down_backward.py \
    >"$OUT/tests/log.txt" 2>&1
echo "tests rc $?"; tail -30 "$OUT/tests/log.txt"
OUT="$OUT/down" timeout 120 python3 tools/bench_down_backward.py >"$OUT/down/log.txt" 2>&1
echo "down rc $?"; cat "$OUT/down/log.txt"
