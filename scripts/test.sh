#!/usr/bin/env bash
# Installs what the project needs, builds it, and runs every test that runs on this machine:
#   1. the main build (CUDA targets compile when nvcc exists; GPU tests skip themselves without a GPU),
#   2. the file-format fuzz tests again under AddressSanitizer in a CPU-only build.
# Usage: scripts/test.sh            (from anywhere; build folders live in the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
jobs=$(nproc)

scripts/install-deps.sh


echo "== build (RelWithDebInfo) =="
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"

echo "== build (AddressSanitizer, CPU only, file-format tests) =="
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DZOETROPE_SANITIZE=address -DZOETROPE_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs" --target safetensors_test

echo "== tests =="
# ctest runs two test processes at once on two cores: OpenMP threads that spin while waiting would
# steal the other process's core, so they sleep instead.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
status=0
build-asan/bin/safetensors_test --gtest_brief=1 || status=1
ctest --test-dir build --output-on-failure -j"$jobs" || status=1
exit $status
