#!/usr/bin/env bash
# GPU machine, one call: the attention benchmark, the CUDA tests, the DiT benchmark; a short table last.
# Carry build-cuda-carry (made here by scripts/device/pack-cuda.sh). Result files go to $OUT/bench-results:
#   tests      cuda_backend_test_<gpu>.json                      (scripts/device/gpu-tests.sh)
#   attention  attention_<gpu>.json                              (scripts/device/bench-attention.sh)
#   dit        dit_forward_1.3b_480p_{zoetrope,pytorch}_<gpu>.json, dit_forward_1.3b_480p_profile_<gpu>.log
#                                                                (scripts/device/bench-dit.sh)
#   scripts/device/cuda-check.sh [tests] [attention] [dit]     (default: all three)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
stages=${*:-tests attention dit}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
echo "commit $ZOETROPE_COMMIT; results in $results (tag $gpu_tag); cuDNN: $(find "$nvidia_pip" -name 'libcudnn.so.9' 2>/dev/null | head -1)"
command -v cuobjdump >/dev/null && [[ -x "$carry/bin/zoetrope-attention-bench" ]] && echo "SASS of the attention kernels: $(cuobjdump -sass "$carry/bin/zoetrope-attention-bench" | grep -c HGMMA) HGMMA, $(cuobjdump -sass "$carry/bin/zoetrope-attention-bench" | grep -c 'HMMA.16816') HMMA.16816"
status=0
if [[ " $stages " == *" attention "* ]]; then
  timeout 300 scripts/device/bench-attention.sh ${ATTENTION_SHAPES:-} >"$logs/attention.log" 2>&1 || status=1
fi
if [[ " $stages " == *" tests "* ]]; then
  scripts/device/gpu-tests.sh >"$logs/gpu-tests.out" 2>&1 || status=1
  cat "$logs/gpu-tests.out"
fi
if [[ " $stages " == *" dit "* ]]; then
  timeout 330 scripts/device/bench-dit.sh >"$logs/dit.log" 2>&1 || status=1
fi
echo "==== summary ===="
[[ -f "$logs/gpu-tests.out" ]] && grep -E "^\[  (PASSED|FAILED) |ran,|FAILED:" "$logs/gpu-tests.out"
[[ -f "$logs/attention.log" ]] && tail -18 "$logs/attention.log"
[[ -f "$logs/dit.log" ]] && grep -E "^\{|eager|compiled|error|Error|written|median" "$logs/dit.log" | cut -c1-300
profile=$results/dit_forward_1.3b_480p_profile_$gpu_tag.log
[[ -f "$profile" ]] && grep -E "^(Linear|Attention|LayerNorm|RmsNorm|ApplyRope|AddGated|Add |total)" "$profile" | cut -c1-300
ls -l "$results"
exit $status
