#!/usr/bin/env bash
# Twenty-fourth session, call 3: down_backward's mainloop variants (BK, stages, GROUP_M).
set -uo pipefail
export OUT
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="$src:$PWD:$PWD/tools"
timeout 170 python3 benchmarks/2026-12-07-s24/mainloop_variants.py 3 2>&1 | tee "$OUT/mainloop.txt"
# (ran as test_variant.py, renamed after)
timeout 60 python3 benchmarks/2026-12-07-s24/variant_tests.py 32 6 8 2>&1 | tail -3
