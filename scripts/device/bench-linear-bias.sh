#!/usr/bin/env bash
# GPU machine: the 1.3B DiT forward with each Linear bias placement (ZOETROPE_LINEAR_BIAS = f32, compute,
# separate; kernels/cuda/cuda_backend.cc), per-operator profile of each. Writes to $OUT/bench-results, per mode:
#   dit_forward_1.3b_480p_linear_bias_<mode>_<gpu>.json   (bench/convert_results.py dit-bench)
#   dit_profile_linear_bias_<mode>_<gpu>.log              (zoetrope-dit-bench --profile, its stderr)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
latent=16,21,60,104 warmup=1 iterations=3
failed=0
for mode in f32 compute separate; do
  echo "== ZOETROPE_LINEAR_BIAS=$mode"
  profile=$results/dit_profile_linear_bias_${mode}_$gpu_tag.log
  ZOETROPE_LINEAR_BIAS=$mode "$carry/bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda \
    --latent $latent --workdir /tmp/zoetrope-dit-bench --reuse_weights --warmup $warmup --iterations $iterations \
    --profile >"$logs/dit_bias_$mode.json" 2>"$profile"
  status=$?
  grep -E "^Linear BF16 32760" "$profile"
  python3 bench/convert_results.py dit-bench --json "$logs/dit_bias_$mode.json" --exit-status $status \
    --warmup $warmup --iterations $iterations --name "dit_forward_1.3b_480p_linear_bias_${mode}_{gpu}" \
    --results-dir "$results" --shape config=wan2.1-t2v-1.3b --shape "latent=[${latent}]" --shape tokens=32760 \
    --field linear_bias=$mode --field "weights=random bf16 (zoetrope-mkweights)" || failed=1
done
exit $failed
