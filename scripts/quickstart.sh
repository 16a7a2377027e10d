#!/usr/bin/env bash
# The quick start: installs what the project needs, builds the tools, writes a tiny random model
# (DiT, umT5 text encoder, VAE, stand-in tokenizer), and generates one MP4 from a prompt on the CPU.
# Usage: scripts/quickstart.sh [extra flags for `zoetrope generate`]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B "${ZOETROPE_BUILD_DIR:-build}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "${ZOETROPE_BUILD_DIR:-build}" -j"$(nproc)" --target zoetrope zoetrope-mkweights zoetrope-mkweights-text zoetrope-mkweights-vae

model=models/tiny
if [ ! -f "$model/transformer/config.json" ]; then
  echo "writing tiny random model to $model"
  scripts/make-model.sh --size tiny --build-dir "${ZOETROPE_BUILD_DIR:-build}" "$model" >/dev/null
fi
mkdir -p out
video=$("${ZOETROPE_BUILD_DIR:-build}"/bin/zoetrope generate --model "$model" --prompt "a paper boat drifting down a rainy street" \
  --width 128 --height 128 --frames 17 --steps 10 --seed 42 --output out/quickstart.mp4 "$@")
echo "video written to $video"
