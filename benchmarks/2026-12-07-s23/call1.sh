#!/usr/bin/env bash
# The first GPU call after the twenty-second session (twenty-third session; ran on an H100, logs
# in call1/; step 3's sed matched _kernels.py as it was then). Carry .whl. Logs under $OUT.
# 1. Turns on, in the machine's copy only, the epilogue dA and the row masks (_FUSED_DA_RANK =
#    16, _MASKED_TAILS = True; never GPU-run), then every GPU test (the fast sigmoid's bits
#    among them) and the compile check under the machine's Triton.
# 2. The down kernel table for SiLU, GELU and GELU-tanh (GELU's never timed) and a twelve-round
#    MLP A/B of fuses_dA (bf16 and NF4), with the fast sigmoid as shipped (on).
# 3. The kernel table again with the fast sigmoid off: its effect on the epilogue.
set -uo pipefail
export OUT
db=packages/lk-autograd/src/lk_autograd/_down_backward.py
sed -i 's/^_FUSED_DA_RANK = 0$/_FUSED_DA_RANK = 16/; s/^_MASKED_TAILS = False$/_MASKED_TAILS = True/' $db
grep -E "^_(FUSED_DA_RANK|MASKED_TAILS) =" $db
timeout 240 bash tools/gpu_session.sh compile tests
grep -E "FAILED|ERROR|passed|failed" "$OUT/tests/log.txt" | tail -15
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
mkdir -p "$OUT/down" "$OUT/down_slow_sigmoid"
OUT="$OUT/down" timeout 200 python3 tools/bench_down_backward.py --ab 12 --switch fuses_dA \
    --activations silu gelu gelu_tanh >"$OUT/down/log.txt" 2>&1
echo "down rc $?"; head -c 7000 "$OUT/down/log.txt"
sed -i 's/^    torch.version.hip is None and not triton.knobs.runtime.interpret$/    False/' \
    packages/lk-triton/src/lk_triton/_kernels.py
grep -A2 "^_FAST_SIGMOID" packages/lk-triton/src/lk_triton/_kernels.py
OUT="$OUT/down_slow_sigmoid" timeout 90 python3 tools/bench_down_backward.py \
    --activations silu gelu_tanh >"$OUT/down_slow_sigmoid/log.txt" 2>&1
echo "slow sigmoid rc $?"; head -c 3000 "$OUT/down_slow_sigmoid/log.txt"
