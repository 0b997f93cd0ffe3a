#!/usr/bin/env bash
# Twenty-first session, asked for an H200 (refused; not run): the micro suite (r=16, median of 3)
# and the 8-layer model suite at the shipped code. Logs under $OUT.
set -uo pipefail
export OUT
nvidia-smi --query-gpu=name --format=csv,noheader
bash tools/gpu_session.sh compile 2>&1 | tail -1  # installs the carried wheels too
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/micro"
timeout 330 python3 tools/bench.py --suite micro --ranks 16 --repeat 3 --out "$OUT/micro" \
    >"$OUT/micro/log.txt" 2>&1; echo "micro rc $?"; tail -14 "$OUT/micro/log.txt"
timeout 200 bash tools/gpu_session.sh model 2>&1 | tail -4
tail -12 "$OUT/model/log.txt"
