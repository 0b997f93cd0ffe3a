#!/usr/bin/env bash
# The twentieth session's second device call (timeout_s 600, carry [".whl"]): --bench for the
# loop_h epilogue (loop + h stored, cuBLAS dA) against the shipped path; then, on an H200
# only, the micro suite for the table.
# Run from the repository root: bash benchmarks/h100-2026-12-07-s20/call2.sh
set -u
OUT=${OUT:-/tmp/out}
export OUT
here=benchmarks/h100-2026-12-07-s18
PYTHONPATH=packages/lk-autograd/src:packages/lk-triton/src:$here timeout 200 \
    python3 -u $here/gluon_ws_dh_actgrad.py --bench --epilogue loop_h >"$OUT/loop_h.txt" 2>&1
echo "bench loop_h rc $?"
grep -v round "$OUT/loop_h.txt" | tail -n 14
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
echo "after the test: ${SECONDS} s on $gpu"
if [[ $gpu == *H200* ]]; then
    bash tools/gpu_session.sh micro
fi
