#!/usr/bin/env bash
# GPU machine: the 1.3B DiT forward with each Linear bias placement (ZOETROPE_LINEAR_BIAS = f32, compute,
# separate; kernels/cuda/cuda_backend.cc), per-operator profile of each. Logs to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
for mode in f32 compute separate; do
  echo "== ZOETROPE_LINEAR_BIAS=$mode"
  ZOETROPE_LINEAR_BIAS=$mode "$carry/bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda \
    --latent 16,21,60,104 --workdir /tmp/zoetrope-dit-bench --reuse_weights --warmup 1 --iterations 3 --profile \
    >"$OUT/dit_bias_$mode.json" 2>"$OUT/dit_bias_$mode.log"
  grep -E "^Linear BF16 32760" "$OUT/dit_bias_$mode.log"
  cut -c1-200 "$OUT/dit_bias_$mode.json"
done
