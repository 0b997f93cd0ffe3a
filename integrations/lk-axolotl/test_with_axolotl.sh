#!/usr/bin/env bash
# Check LoraKernelsPlugin inside real Axolotl, in a virtual environment of its own (Axolotl
# pins torch/transformers/peft versions the workspace lock does not take).
#
#   integrations/lk-axolotl/test_with_axolotl.sh [VENV_DIR] [AXOLOTL_REQUIREMENT_OR_WHEEL]
#
# Axolotl goes in with --no-deps on top of the workspace's torch / transformers / peft
# versions plus the packages its config loading and model loader import; its full pinned
# dependency set (torch<=2.13 with CUDA wheels, gradio, wandb, lm_eval, ...) is several GB.
# Afterwards `LK_AXOLOTL_PYTHON=VENV_DIR/bin/python uv run pytest tests/integrations` runs the
# same check from the test suite.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-${TMPDIR:-/tmp}/lk-axolotl-venv}"
axolotl="${2:-axolotl==0.19.0}"
[[ -f "$root/.whl/axolotl-0.19.0-py3-none-any.whl" && $# -lt 2 ]] && axolotl="$root/.whl/axolotl-0.19.0-py3-none-any.whl"
cd "$root"
uv venv -q --allow-existing --python 3.11 "$venv"
py="$venv/bin/python"
uv pip install -q --python "$py" \
    "torch==2.15.0" "transformers==5.24.0" "peft==0.21.2" "accelerate==1.15.0" "trl==1.16.0" \
    datasets pydantic addict fire pyyaml colorama einops requests packaging numpy scipy numba \
    pillow bitsandbytes posthog fastcore "liger-kernel==0.8.5" "triton==3.9.0" \
    -e packages/lk-triton -e packages/lk-autograd -e packages/lk-patch \
    -e integrations/lk-transformers -e integrations/lk-accelerate -e integrations/lk-axolotl
uv pip install -q --python "$py" --no-deps "$axolotl"
AXOLOTL_DO_NOT_TRACK=1 "$py" integrations/lk-axolotl/check_with_axolotl.py
