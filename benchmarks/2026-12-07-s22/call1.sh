#!/usr/bin/env bash
# Twenty-second session, first GPU call: the GPU tests refactored last session (never rerun),
# the compile check, then the micro suite (r=16, median of 3) and the 8-layer model suite.
set -uo pipefail
export OUT
bash tools/gpu_session.sh compile micro3 model
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/tests"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/autograd/test_down_backward.py \
    tests/autograd/test_activation_backward.py >"$OUT/tests/log.txt" 2>&1
echo "tests rc $?"; tail -3 "$OUT/tests/log.txt"
tail -14 "$OUT/micro3/log.txt" "$OUT/model/log.txt"
