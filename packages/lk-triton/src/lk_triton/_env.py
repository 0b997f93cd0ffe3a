"""Settings read from the environment at import time."""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")
"""``TRITON_INTERPRET=1`` at import time: CPU tensors then run the Triton kernels in Triton's
interpreter (which has no libdevice and no inline PTX)."""
