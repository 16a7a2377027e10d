#!/usr/bin/env bash
# GPU machine: Zoetrope's attention kernel on the CSR layouts of the sparsity presets (radial at 69,120 and
# 75,600 tokens, attention tile and sliding tile at 75,600; 40 heads, d = 128) against our dense kernel,
# FlexAttention on a BlockMask built from the same CSR, and SDPA cuDNN dense; correctness against fp32 math on
# the listed keys. The layouts come from the carried zoetrope-attention-plan (--dump), so they are exactly what
# the product's kernel gets. Writes $OUT/bench-results/attention_sparse_<gpu>.json
# (bench/sparse_attention_baseline.py through bench/write_result.py); exits non-zero when a kernel failed or a
# result was wrong. About 3-5 minutes on one H200 (FlexAttention compiles once per sequence length).
#   scripts/device/bench-sparse-attention.sh [CASES]    (MODE:FxHxW:HEADS,...; default: the four above)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
cases=()
[[ -n ${1:-} ]] && cases=(--cases "$1")
# Seconds, no GPU: the dumped CSRs against the tool's densities and, with this torch, the BlockMask built from
# them against the CSR. Not fatal, so that the timings still come; its status counts in the exit code.
python3 bench/sparse_attention_baseline.py --self-test --plan-tool "$carry/bin/zoetrope-attention-plan" "${cases[@]}" \
  2>&1 | tee "$logs/sparse-attention-self-test.log"
self_test=${PIPESTATUS[0]}
python3 bench/sparse_attention_baseline.py --bench "$carry/bin/zoetrope-attention-bench" \
  --plan-tool "$carry/bin/zoetrope-attention-plan" "${cases[@]}" --name "attention_sparse_{gpu}" \
  --results-dir "$results" 2>&1 | tee "$logs/sparse-attention.log"
status=${PIPESTATUS[0]}
[[ $self_test -eq 0 ]] || echo "self-test failed (exit $self_test): $logs/sparse-attention-self-test.log"
[[ $status -ne 0 ]] && exit "$status"
exit "$self_test"
