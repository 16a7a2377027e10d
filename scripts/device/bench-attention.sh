#!/usr/bin/env bash
# GPU machine: Zoetrope's attention kernel vs PyTorch SDPA (cuDNN, flash) and FlexAttention on the same
# inputs, at (1, 12, 32760) and (1, 40, 75600), d = 128; correctness of ours vs SDPA.
# Writes $OUT/bench-results/attention_<gpu>.json (bench/attention_baseline.py through bench/write_result.py).
#   scripts/device/bench-attention.sh [SHAPES]     (default 12x32760,40x75600)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
python3 bench/attention_baseline.py --bench "$carry/bin/zoetrope-attention-bench" \
  --shapes "${1:-12x32760,40x75600}" --name "attention_{gpu}" --results-dir "$results"
