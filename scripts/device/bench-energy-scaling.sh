#!/usr/bin/env bash
# GPU machine: the scaling study of "Video Killed the Energy Budget" on our engine (issue 13): latency and GPU
# energy of whole jobs through the service (zoetrope serve --embedded, one H200, random 1.3B weights, dense,
# CFG) against frames (17-81 at 480p, 10 steps), steps (10-40 at 480p, 33 frames) and resolution (272p-720p,
# 17 frames), with the estimate quoted at submission and its error. About 3-4 minutes on an H200.
#   scripts/device/run-packed.sh bench-energy-scaling.sh
# -> $OUT/bench-results/energy_scaling_<gpu>.json; then HERE (matplotlib):
#   /usr/bin/python3 bench/energy_scaling_plot.py bench/results/energy_scaling_h200.json
# writes the table (Markdown) and PNG plots next to it in bench/results/.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
source scripts/device/wan13b-model.sh
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader
make_13b_model || { echo "cannot write the random 1.3B model" >&2; exit 1; }
timeout 570 python3 bench/energy_service_run.py scaling --zoetrope "$carry/bin/zoetrope" --model "$model" \
  --workdir /tmp/zoetrope-energy-scaling 2>&1 | tee "$logs/bench-energy-scaling.log"
status=${PIPESTATUS[0]}
cp /tmp/zoetrope-energy-scaling/serve.log "$logs/" 2>/dev/null
exit $status
