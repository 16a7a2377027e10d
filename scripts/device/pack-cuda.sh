#!/usr/bin/env bash
# Run HERE (not on the GPU machine): builds the CUDA test and benchmark binaries for sm_90a and packs
# them with the Debian libraries they need into build-cuda-carry/ (git-ignored by /build*/), and that
# folder xz-compressed into build-cuda-pack/carry.tar.xz, the one folder to name in the device run's
# `carry` (unpack it there first, see below). build-cuda-carry/commit records the commit it was built
# from (+ "-dirty" when tracked files differed): the device scripts put it into every result file.
#   scripts/device/pack-cuda.sh [--pipeline] [BUILD_DIR]      (default build-cuda; an existing CUDA build
#   folder of any generator serves, e.g. the plain `build`)
# Without --pipeline: cuda_backend_test, cuda_communicator_test, zoetrope-dit-bench, zoetrope-vae-bench (bench-vae.sh), zoetrope-attention-bench (cuda-check.sh),
# zoetrope-attention-plan (the CSR dumps of bench-sparse-attention.sh) and zoetrope-attention-fidelity
# (pipeline-check.sh fidelity13b).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# --pipeline: also the CLI and the weight writers, and a tiny model folder, for scripts/device/pipeline-check.sh
# (one pack then serves pipeline-check.sh, cuda-check.sh and the bench-*.sh scripts)
pipeline=false
if [ "${1:-}" = "--pipeline" ]; then pipeline=true; shift; fi
build=${1:-$root/build-cuda}
carry=$root/build-cuda-carry
if [ -f "$build/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build" -DZOETROPE_CUDA=ON >/dev/null
else
  cmake -S "$root" -B "$build" -G Ninja -DZOETROPE_CUDA=ON >/dev/null
fi
binaries=(cuda_backend_test cuda_communicator_test zoetrope-dit-bench zoetrope-alltoall-bench zoetrope-attention-bench zoetrope-attention-plan
          zoetrope-attention-fidelity zoetrope-vae-bench)
$pipeline && binaries+=(zoetrope zoetrope-dit zoetrope-mkweights zoetrope-mkweights-text zoetrope-mkweights-vae)
cmake --build "$build" -j2 --target "${binaries[@]}"
rm -rf "$carry"
mkdir -p "$carry/bin"
for binary in "${binaries[@]}"; do cp "$build/bin/$binary" "$carry/bin/"; done
if $pipeline; then
  # The tokenizer travels; the random weights (5 MB that xz cannot shrink) are rewritten on the GPU machine
  # by run-packed.sh with the same tools and seeds, byte for byte.
  "$root/scripts/make-model.sh" --size tiny --build-dir "$build" "$carry/models/tiny" >/dev/null
  find "$carry/models/tiny" -name '*.safetensors' -delete
fi
strip "$carry"/bin/*
"$root/../shared/device/collect-libs.sh" "$carry/lib" "$carry"/bin/*
if head=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
  # Plumbing only (never writes the index); a file merely touched may count as a difference.
  git -C "$root" diff-index --quiet HEAD -- || head=$head-dirty
  echo "$head" > "$carry/commit"
else
  echo unknown > "$carry/commit"
fi
du -sh "$carry"
# The Debian libraries (FFmpeg's codecs, OpenBLAS, ICU, gRPC) are ~230 MiB: compressed they fit the
# 64 MiB a device run may carry. Carry build-cuda-pack and unpack it there first:
#   mkdir -p build-cuda-carry && tar -C build-cuda-carry -xJf build-cuda-pack/carry.tar.xz
mkdir -p "$root/build-cuda-pack"
tar -C "$carry" -cf - . | xz -9e -T2 > "$root/build-cuda-pack/carry.tar.xz"
du -sh "$root/build-cuda-pack"
