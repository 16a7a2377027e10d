#!/usr/bin/env bash
# The quick start: installs what the project needs, builds the command-line tools, writes tiny random
# weights, and runs one small generation on the CPU.
# Usage: scripts/quickstart.sh [extra flags for `zoetrope generate`]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target zoetrope zoetrope-mkweights

model=models/tiny
if [ ! -f "$model/config.json" ]; then
  build/bin/zoetrope-mkweights --config tiny --seed 0 -o "$model/diffusion_pytorch_model.safetensors"
fi
mkdir -p out
build/bin/zoetrope generate --model "$model" --prompt "a paper boat drifting down a rainy street" \
  --width 128 --height 128 --frames 17 --steps 10 --seed 42 --output out/quickstart-latents.safetensors "$@"
