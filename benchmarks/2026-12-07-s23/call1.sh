#!/usr/bin/env bash
# The first GPU call after the twenty-second session (written in the twenty-third, when no GPU
# was lent; not yet run): it turns on the epilogue dA and the row masks in the machine's copy
# (_FUSED_DA_RANK = 16, _MASKED_TAILS = True; both never GPU-run), then every GPU test, the
# compile check under the machine's Triton, the down kernel table and a twelve-round MLP A/B of
# fuses_dA (bf16 and NF4). Carry .whl. Logs under $OUT.
set -uo pipefail
export OUT
sed -i 's/^_FUSED_DA_RANK = 0$/_FUSED_DA_RANK = 16/; s/^_MASKED_TAILS = False$/_MASKED_TAILS = True/' \
    packages/lk-autograd/src/lk_autograd/_down_backward.py
grep -E "^_(FUSED_DA_RANK|MASKED_TAILS) =" packages/lk-autograd/src/lk_autograd/_down_backward.py
timeout 240 bash tools/gpu_session.sh compile tests
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -15
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/down"
OUT="$OUT/down" timeout 260 python3 tools/bench_down_backward.py --ab 12 --switch fuses_dA \
    >"$OUT/down/log.txt" 2>&1
echo "down rc $?"; head -c 6000 "$OUT/down/log.txt"
