#!/usr/bin/env bash
# Twenty-first session, asked for an H200 (refused; not run): the micro suite (r=16, median of 3)
# and the 8-layer model suite at the shipped code. Logs under $OUT.
set -uo pipefail
export OUT
bash tools/gpu_session.sh compile micro3 model
tail -14 "$OUT/micro3/log.txt" "$OUT/model/log.txt"
