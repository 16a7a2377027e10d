#!/usr/bin/env bash
# GPU machine: one Wan2.1-1.3B DiT forward at 480p/81 frames (32,760 tokens), random bf16 weights:
# zoetrope-dit-bench on CUDA vs the PyTorch implementation bench/dit_baseline.py. JSON to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
"$carry/bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda --latent 16,21,60,104 \
  --workdir /tmp/zoetrope-dit-bench --warmup 1 --iterations 3 --profile | tee "$OUT/dit_zoetrope.json"
python3 bench/dit_baseline.py --config 1.3b --latent 16,21,60,104 ${DIT_COMPILE:+--compile} --json "$OUT/dit_pytorch.json"
