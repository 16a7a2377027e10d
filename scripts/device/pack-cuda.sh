#!/usr/bin/env bash
# Run HERE (not on the GPU machine): builds the CUDA test and benchmark binaries for sm_90a and packs
# them with the Debian libraries they need into build-cuda-carry/ (git-ignored by /build*/), the one
# folder to name in the device run's `carry`.
#   scripts/device/pack-cuda.sh [BUILD_DIR]      (default build-cuda)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build-cuda}
carry=$root/build-cuda-carry
cmake -S "$root" -B "$build" -G Ninja -DZOETROPE_CUDA=ON >/dev/null
ninja -C "$build" -j2 cuda_backend_test zoetrope-attention-bench zoetrope-dit-bench
rm -rf "$carry"
mkdir -p "$carry/bin"
cp "$build/bin/cuda_backend_test" "$build/bin/zoetrope-attention-bench" "$build/bin/zoetrope-dit-bench" "$carry/bin/"
strip "$carry"/bin/*
"$root/../shared/device/collect-libs.sh" "$carry/lib" "$carry"/bin/*
git -C "$root" rev-parse HEAD > "$carry/commit" 2>/dev/null || echo unknown > "$carry/commit"
du -sh "$carry"
