#!/usr/bin/env bash
# Writes a complete model folder of deterministic random weights (no downloads): DiT, umT5 text
# encoder, VAE and the stand-in tokenizer, in the diffusers layout (transformer/, text_encoder/, vae/,
# tokenizer/) or the original Wan2.1 layout (files in the folder root, google/umt5-xxl/spiece.model).
#
# Usage: scripts/make-model.sh [--size tiny|1.3b|14b] [--layout diffusers|original] [--dtype f32|bf16]
#                              [--seed S] [--build-dir DIR] [--weights-only] OUT_DIR
# --weights-only writes the weight files and leaves the tokenizer folder alone (the device pack carries the
# tokenizer and rewrites the deterministic weights there, which do not compress).
# The tools must be built already (scripts/quickstart.sh and scripts/test.sh do that).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
size=tiny layout=diffusers dtype=f32 seed=0 build_dir="$root/build" weights_only=false
while [ $# -gt 1 ]; do
  case $1 in
    --weights-only) weights_only=true; shift ;;
    --size) size=$2; shift 2 ;;
    --layout) layout=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --build-dir) build_dir=$2; shift 2 ;;
    *) echo "make-model: unknown option $1" >&2; exit 2 ;;
  esac
done
if [ $# -ne 1 ]; then
  echo "usage: $0 [--size tiny|1.3b|14b] [--layout diffusers|original] [--dtype f32|bf16] [--seed S] OUT_DIR" >&2
  exit 2
fi
out=$1
case $size in
  tiny) dit=tiny text=tiny vae=tiny ;;
  1.3b) dit=wan2.1-t2v-1.3b text=umt5-xxl vae=wan2.1-vae ;;
  14b) dit=wan2.1-t2v-14b text=umt5-xxl vae=wan2.1-vae ;;
  *) echo "make-model: --size must be tiny, 1.3b or 14b" >&2; exit 2 ;;
esac
bin=$build_dir/bin
for tool in zoetrope-mkweights zoetrope-mkweights-text zoetrope-mkweights-vae; do
  [ -x "$bin/$tool" ] || { echo "make-model: $bin/$tool not built" >&2; exit 1; }
done

case $layout in
  diffusers)
    "$bin/zoetrope-mkweights" --config "$dit" --seed "$seed" --dtype "$dtype" --diffusers \
      -o "$out/transformer/diffusion_pytorch_model.safetensors"
    "$bin/zoetrope-mkweights-text" --config "$text" --seed "$seed" --dtype "$dtype" --hf_names \
      -o "$out/text_encoder/model.safetensors"
    "$bin/zoetrope-mkweights-vae" --config "$vae" --seed "$seed" --diffusers \
      -o "$out/vae/diffusion_pytorch_model.safetensors"
    $weights_only || "$root/scripts/build-tokenizer.sh" "$out/tokenizer" >/dev/null
    ;;
  original)
    "$bin/zoetrope-mkweights" --config "$dit" --seed "$seed" --dtype "$dtype" \
      -o "$out/diffusion_pytorch_model.safetensors"
    "$bin/zoetrope-mkweights-text" --config "$text" --seed "$seed" --dtype "$dtype" \
      -o "$out/models_t5_umt5-$text-enc.safetensors"
    "$bin/zoetrope-mkweights-vae" --config "$vae" --seed "$seed" -o "$out/Wan2.1_VAE.safetensors"
    $weights_only || "$root/scripts/build-tokenizer.sh" "$out/google/umt5-xxl" >/dev/null
    ;;
  *) echo "make-model: --layout must be diffusers or original" >&2; exit 2 ;;
esac
echo "$out"
