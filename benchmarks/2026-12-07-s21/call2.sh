#!/usr/bin/env bash
# Twenty-first session, second GPU call: the fixed retain test, the micro suite (r=16, median of
# 3 runs) and the 8-layer model suite, with the down_backward route shipped. Logs under $OUT.
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
bash tools/gpu_session.sh compile 2>&1 | tail -2  # installs the carried wheels too
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/autograd/test_down_backward.py 2>&1 | tail -3
mkdir -p "$OUT/micro"
timeout 330 python3 tools/bench.py --suite micro --ranks 16 --repeat 3 --out "$OUT/micro" \
    >"$OUT/micro/log.txt" 2>&1; echo "micro rc $?"; tail -40 "$OUT/micro/log.txt"
timeout 200 bash tools/gpu_session.sh model 2>&1 | tail -4
tail -30 "$OUT/model/log.txt"
