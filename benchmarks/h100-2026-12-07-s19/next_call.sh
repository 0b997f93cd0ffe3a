#!/usr/bin/env bash
# The nineteenth session's unrun GPU step (one device call, up to ~9 min, no carry: give run timeout_s 600):
#   1. gluon_ws_dh_actgrad --bench for the loop and loop_da epilogues, each against cuBLAS dh,
#      the pair, the shipped path and FUSE=False, checked against float64 first;
#   2. Nsight Compute stall summaries of the unrolled and loop kernels and of FUSE=False
#      (if ncu is on the machine), to confirm or refute instruction fetch as the limit.
# Run from the repository root: bash benchmarks/h100-2026-12-07-s19/next_call.sh
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
here=benchmarks/h100-2026-12-07-s18
export PYTHONPATH=packages/lk-autograd/src:packages/lk-triton/src:$here
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# One process per variant: a hang (the script exits after 30 s) then costs only that one.
for epi in loop loop_da; do
    timeout 200 python3 -u $here/gluon_ws_dh_actgrad.py --bench --epilogue $epi >"$OUT/$epi.txt" 2>&1
    echo "bench $epi rc $?"
    tail -n 12 "$OUT/$epi.txt"
done

ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -n 1)
[[ -n $ncu ]] || { echo "no ncu on this machine"; exit 0; }
cat >/tmp/dh_actgrad_once.py <<'PY'
import torch
import gluon_ws_dh_actgrad as m

M, D, I = 8192, 4096, 14336
dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
w = (torch.randn(D, I, device="cuda") * 0.02).to(torch.bfloat16)
e = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
g = torch.randn(M, I, device="cuda", dtype=torch.bfloat16)
for _ in range(2):  # the first round compiles; ncu skips it (-s 3)
    m.dh_actgrad(dy, w, e, g, epi="ptr")
    m.dh_actgrad(dy, w, e, g, epi="loop")
    m.dh_only(dy, w)
torch.cuda.synchronize()
PY
timeout 200 "$ncu" -k regex:ws_dh -s 3 -c 3 --section WarpStateStats --section SchedulerStats \
    --section SpeedOfLight python3 /tmp/dh_actgrad_once.py >"$OUT/ncu.txt" 2>&1
echo "ncu rc $?"
grep -E "ws_dh|Duration|Warp Cycles Per Issued|Issue Slots Busy|No Eligible|No Instruction|Stall" \
    "$OUT/ncu.txt" | head -n 60
