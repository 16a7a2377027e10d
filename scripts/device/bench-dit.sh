#!/usr/bin/env bash
# GPU machine: one Wan2.1-1.3B DiT forward at 480p/81 frames (32,760 tokens), random bf16 weights:
# zoetrope-dit-bench on CUDA vs the PyTorch implementation bench/dit_baseline.py (DIT_COMPILE=1: also
# torch.compile). Writes to $OUT/bench-results:
#   dit_forward_1.3b_480p_pytorch_<gpu>.json    bench/dit_baseline.py
#   dit_forward_1.3b_480p_zoetrope_<gpu>.json   bench/convert_results.py dit-bench (with the ratios to PyTorch)
#   dit_forward_1.3b_480p_profile_<gpu>.log     zoetrope-dit-bench --profile: per-operator times (its stderr)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
latent=16,21,60,104 warmup=1 iterations=3
profile=$results/dit_forward_1.3b_480p_profile_$gpu_tag.log
"$carry/bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda --latent $latent \
  --workdir /tmp/zoetrope-dit-bench --warmup $warmup --iterations $iterations --profile \
  >"$logs/dit_zoetrope.json" 2>"$profile"
status=$?
cat "$logs/dit_zoetrope.json"
python3 bench/dit_baseline.py --config 1.3b --latent $latent --warmup $warmup --iterations $iterations \
  ${DIT_COMPILE:+--compile} --name "dit_forward_1.3b_480p_pytorch_{gpu}" --results-dir "$results"
baseline_status=$?
shape=(--shape config=wan2.1-t2v-1.3b --shape "latent=[${latent}]" --shape tokens=32760 --shape frames=81
       --shape width=832 --shape height=480 --shape text_tokens=128)
python3 bench/convert_results.py dit-bench --json "$logs/dit_zoetrope.json" --exit-status $status \
  --warmup $warmup --iterations $iterations --name "dit_forward_1.3b_480p_zoetrope_{gpu}" --results-dir "$results" \
  "${shape[@]}" --field "weights=random bf16 (zoetrope-mkweights)" \
  --baseline "$results/dit_forward_1.3b_480p_pytorch_$gpu_tag.json"
convert=$?
(( status == 0 && baseline_status == 0 && convert == 0 ))
