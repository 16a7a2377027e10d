#!/usr/bin/env bash
# GPU machine, one call: the attention benchmark, the CUDA parity tests, the DiT benchmark; a short table last.
# Carry build-cuda-carry (made here by scripts/device/pack-cuda.sh).
#   scripts/device/cuda-check.sh [tests] [attention] [dit]     (default: all three)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
stages=${*:-tests attention dit}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu --format=csv,noheader
echo "commit $ZOETROPE_COMMIT; cuDNN: $(find "$nvidia_pip" -name 'libcudnn.so.9' 2>/dev/null | head -1)"
command -v cuobjdump >/dev/null && echo "SASS of the attention kernels: $(cuobjdump -sass "$carry/bin/zoetrope-attention-bench" | grep -c HGMMA) HGMMA, $(cuobjdump -sass "$carry/bin/zoetrope-attention-bench" | grep -c 'HMMA.16816') HMMA.16816"
status=0
if [[ " $stages " == *" attention "* ]]; then
  timeout 300 scripts/device/bench-attention.sh ${ATTENTION_SHAPES:-} >"$OUT/attention.log" 2>&1 || status=1
fi
if [[ " $stages " == *" tests "* ]]; then
  timeout 180 "$carry/bin/cuda_backend_test" --gtest_output=json:"$OUT/cuda_backend_test.json" >"$OUT/tests.log" 2>&1
  status=$?
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|relative L2|internal check" "$OUT/tests.log" | head -40
fi
if [[ " $stages " == *" dit "* ]]; then
  timeout 330 scripts/device/bench-dit.sh >"$OUT/dit.log" 2>&1 || status=1
fi
echo "==== summary ===="
[[ -f "$OUT/tests.log" ]] && grep -E "^\[  (PASSED|FAILED) " "$OUT/tests.log"
[[ -f "$OUT/attention.log" ]] && tail -18 "$OUT/attention.log"
[[ -f "$OUT/dit.log" ]] && grep -E "^\{|eager|compiled|error|Error|^(Linear|Attention|LayerNorm|RmsNorm|ApplyRope|AddGated|Add |total)" "$OUT/dit.log" | cut -c1-300
exit $status
