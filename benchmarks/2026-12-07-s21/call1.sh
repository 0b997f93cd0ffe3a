#!/usr/bin/env bash
# Twenty-first session, first GPU call: compile check, the new kernel's tests, its benchmark,
# then all the GPU tests. Logs under $OUT.
set -uo pipefail
export OUT
bash tools/gpu_session.sh compile 2>&1 | tail -6
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu tests/autograd/test_down_backward.py \
    2>&1 | tail -40 | tee "$OUT/down_tests.txt"
bash tools/gpu_session.sh down 2>&1 | tail -4
cat "$OUT/down/log.txt"
timeout 200 bash tools/gpu_session.sh tests 2>&1 | tail -8
