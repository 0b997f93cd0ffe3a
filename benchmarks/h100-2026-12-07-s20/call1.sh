#!/usr/bin/env bash
# The twentieth session's first device call (timeout_s 600, carry [".whl"]): the nineteenth
# session's unrun loop/loop_da test, then, on an H200 only and if time is left, the micro suite
# for the H200 table (the last H200 run of it is the ninth session's).
# Run from the repository root: bash benchmarks/h100-2026-12-07-s20/call1.sh
set -u
OUT=${OUT:-/tmp/out}
export OUT
bash benchmarks/h100-2026-12-07-s19/next_call.sh
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
echo "after the test: ${SECONDS} s on $gpu"
if [[ $gpu == *H200* && $SECONDS -lt 330 ]]; then
    bash tools/gpu_session.sh micro
fi
