#!/usr/bin/env bash
# One call on the lent GPU machine (no uv there: its torch, triton, transformers and peft, with
# the workspace's packages on PYTHONPATH): the GPU tests, then the benchmarks, each step's log
# and files under $OUT/<step>. Run from the repository root; carry .whl/ (made by
# ../shared/tools/gpu-wheels.sh bitsandbytes liger-kernel axolotl ...) for the peers and 4-bit.
#
#   bash tools/gpu_session.sh [STEP...]     default: tests compile micro model
#
# Steps: tests (pytest -m gpu), compile (tests/test_hopper_compile.py under that Triton),
# micro (r=16, bf16 and NF4; micro3: the median of 3 runs), model (8 layers, each variant's
# kernels in one profiled step after the timed ones), model32 (32 layers, gradient
# checkpointing),
# grads (tools/bench_lora_grads.py), actgrad (tools/bench_activation_backward.py: the kernel
# table and a twelve-round MLP A/B), actsweep (its tile sweep), profile (kernel tables of the
# QKV and MLP blocks, r=16), down (tools/bench_down_backward.py: the kernel table and a
# twelve-round MLP A/B, bf16 and NF4), down_table (its kernel table for SiLU, GELU, GELU-tanh),
# launches (tools/bench_overhead.py --launches: host us per launch, kept kernel against the JIT).
set -uo pipefail
cd "$(dirname "$0")/.." || exit
OUT=${OUT:-bench-results}
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
fi
src=""
for p in packages/*/src integrations/*/src; do src="$src:$PWD/$p"; done
export PYTHONPATH="/tmp/site$src:$PWD:$PWD/tools"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

step() {  # step NAME COMMAND...: run it, log to $OUT/NAME/log.txt, report its status
    local name=$1 start=$SECONDS
    shift
    mkdir -p "$OUT/$name"
    "$@" >"$OUT/$name/log.txt" 2>&1
    local rc=$?
    echo "== $name: exit $rc, $((SECONDS - start)) s; last lines:"
    tail -n 4 "$OUT/$name/log.txt"
}

pytest=(python3 -m pytest -q -p no:cacheprovider)
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(tests compile micro model)
for s in "${steps[@]}"; do
    case $s in
        tests) step tests "${pytest[@]}" -m gpu tests/autograd tests/triton ;;
        compile) step compile "${pytest[@]}" tests/test_hopper_compile.py ;;
        micro) step micro python3 tools/bench.py --suite micro --ranks 16 --out "$OUT/micro" ;;
        micro3) step micro3 python3 tools/bench.py --suite micro --ranks 16 --repeat 3 \
            --out "$OUT/micro3" ;;
        model) step model python3 tools/bench.py --suite model --layers 8 --profile \
            --out "$OUT/model" ;;
        model32) step model32 python3 tools/bench.py --suite model --layers 32 --out "$OUT/model32" ;;
        grads) step grads env OUT="$OUT/grads" python3 tools/bench_lora_grads.py ;;
        actgrad) step actgrad env OUT="$OUT/actgrad" python3 tools/bench_activation_backward.py \
            --ab 12 ;;
        down) step down env OUT="$OUT/down" python3 tools/bench_down_backward.py --ab 12 ;;
        down_table) step down_table env OUT="$OUT/down_table" python3 tools/bench_down_backward.py \
            --activations silu gelu gelu_tanh ;;
        actsweep) step actsweep env OUT="$OUT/actsweep" python3 tools/bench_activation_backward.py \
            --sweep ;;
        launches) step launches python3 tools/bench_overhead.py --launches ;;
        profile) step profile bash -c "python3 tools/bench_lora_blocks.py --profile qkv --ranks 16 \
            && python3 tools/bench_lora_blocks.py --profile mlp --ranks 16" ;;
        *) echo "unknown step $s (tests compile micro micro3 model model32 grads actgrad down down_table actsweep launches profile)" && exit 2 ;;
    esac
done
