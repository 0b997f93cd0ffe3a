#!/usr/bin/env bash
# Prepared for the twenty-fifth session (not run here: this session's device time ran out):
# the split-MMA-partition kernel checked against the shipped one and timed, then the Gluon
# input-gradient GEMM against _gemm and cuBLAS (gluon_dx.py). Logs under $OUT.
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="$src:$PWD:$PWD/tools"
timeout 200 python3 benchmarks/2026-12-07-s24/split_mma.py 2>&1 | tee "$OUT/split_mma.txt"
timeout 200 python3 benchmarks/2026-12-07-s24/gluon_dx.py 2>&1 | tee "$OUT/gluon_dx.txt"
