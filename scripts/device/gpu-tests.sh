#!/usr/bin/env bash
# GPU machine: the CUDA tests (cuda_backend_test, cuda_communicator_test) in required mode, and their result
# files. Carry build-cuda-carry (scripts/device/pack-cuda.sh). Writes $OUT/bench-results/<binary>_<gpu>.json
# (counts ran/passed/failed/skipped, each test, the relative L2 values the tests record and print) through
# bench/convert_results.py; the GoogleTest report and the log stay in $OUT/logs/.
# Fails when the binary fails, when no test ran, or when any test failed or was skipped: on the GPU
# machine a skipped GPU test is a failure (ZOETROPE_REQUIRE_GPU=1 tells the binary so as well).
#   scripts/device/gpu-tests.sh [extra gtest flags, e.g. --gtest_filter=CudaDitTest.*]
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
failed=0
# With one GPU, the two-GPU NCCL test cannot run (a skip counts as a failure here): leave it out by name.
gpus=$(nvidia-smi -L 2>/dev/null | wc -l)
for binary in ${ZOETROPE_GPU_TEST_BINARIES:-cuda_backend_test cuda_communicator_test}; do
  report=$logs/$binary.gtest.json
  rm -f "$report"
  filter=()
  if [[ $binary == cuda_communicator_test && $gpus -lt 2 && " $* " != *gtest_filter* ]]; then
    filter=(--gtest_filter=-NcclCommunicator.TwoGpuCollectives)
  fi
  ZOETROPE_REQUIRE_GPU=1 timeout 300 "$carry/bin/$binary" --gtest_output=json:"$report" "${filter[@]}" "$@" \
    >"$logs/$binary.log" 2>&1
  status=$?
  grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|relative L2|internal check" "$logs/$binary.log" | head -40
  python3 bench/convert_results.py gtest --gtest-json "$report" --log "$logs/$binary.log" --exit-status "$status" \
    --name "${binary}_{gpu}" --results-dir "$results" ${*:+--field "gtest_flags=$*"} || failed=1
done
exit $failed
