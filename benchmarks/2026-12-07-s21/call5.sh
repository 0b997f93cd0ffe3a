#!/usr/bin/env bash
# Twenty-first session, last GPU call (no H200 came): the down_backward MLP A/B over 12 rounds,
# then the micro suite (r=16, median of 3) again. Logs under $OUT.
set -uo pipefail
export OUT
nvidia-smi --query-gpu=name --format=csv,noheader
bash tools/gpu_session.sh compile 2>&1 | tail -1  # installs the carried wheels too
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/down" "$OUT/micro"
OUT="$OUT/down" timeout 200 python3 tools/bench_down_backward.py --ab 12 >"$OUT/down/log.txt" 2>&1
echo "down rc $?"
timeout 200 python3 tools/bench.py --suite micro --ranks 16 --repeat 3 --out "$OUT/micro" \
    >"$OUT/micro/log.txt" 2>&1; echo "micro rc $?"; tail -14 "$OUT/micro/log.txt"
