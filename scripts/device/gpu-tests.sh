#!/usr/bin/env bash
# GPU machine: the CUDA tests (cuda_backend_test) in required mode, and their result file.
# Carry build-cuda-carry (scripts/device/pack-cuda.sh). Writes $OUT/bench-results/cuda_backend_test_<gpu>.json
# (counts ran/passed/failed/skipped, each test, the relative L2 values the tests record and print) through
# bench/convert_results.py; the GoogleTest report and the log stay in $OUT/logs/.
# Fails when the binary fails, when no test ran, or when any test failed or was skipped: on the GPU
# machine a skipped GPU test is a failure (ZOETROPE_REQUIRE_GPU=1 tells the binary so as well).
#   scripts/device/gpu-tests.sh [extra gtest flags, e.g. --gtest_filter=CudaDitTest.*]
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
report=$logs/cuda_backend_test.gtest.json
rm -f "$report"
ZOETROPE_REQUIRE_GPU=1 timeout 300 "$carry/bin/cuda_backend_test" --gtest_output=json:"$report" "$@" \
  >"$logs/tests.log" 2>&1
status=$?
grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|relative L2|internal check" "$logs/tests.log" | head -40
python3 bench/convert_results.py gtest --gtest-json "$report" --log "$logs/tests.log" --exit-status "$status" \
  --name "cuda_backend_test_{gpu}" --results-dir "$results" ${*:+--field "gtest_flags=$*"}
