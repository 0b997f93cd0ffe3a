#!/usr/bin/env bash
# Twenty-second session, first GPU call: the down_backward and activation_backward GPU tests
# (the row masks are new; the shared route helpers were never rerun), the compile check, the
# down kernel table (masks' cost at 8192 tokens), then micro (r=16, median of 3) and model (8
# layers). Logs under $OUT.
set -uo pipefail
export OUT
bash tools/gpu_session.sh compile 2>&1 | tail -3  # installs the carried wheels too
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/tests" "$OUT/down"
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/autograd/test_down_backward.py \
    tests/autograd/test_activation_backward.py >"$OUT/tests/log.txt" 2>&1
echo "tests rc $?"; tail -25 "$OUT/tests/log.txt"
OUT="$OUT/down" timeout 60 python3 tools/bench_down_backward.py >"$OUT/down/log.txt" 2>&1
echo "down rc $?"; tail -8 "$OUT/down/log.txt"
timeout 170 bash tools/gpu_session.sh micro3 | tail -1; tail -14 "$OUT/micro3/log.txt"
timeout 150 bash tools/gpu_session.sh model | tail -1; tail -14 "$OUT/model/log.txt"
