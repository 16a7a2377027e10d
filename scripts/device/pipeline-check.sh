#!/usr/bin/env bash
# GPU machine, the whole pipeline on CUDA. Carry build-cuda-carry (scripts/device/pack-cuda.sh --pipeline).
#   scripts/device/pipeline-check.sh tests       the CUDA parity tests (cuda_backend_test)
#   scripts/device/pipeline-check.sh parity      tiny model: 4-step generation on CUDA vs CPU, same seed
#                                                  (latent relative L2), and an MP4 made on CUDA
#   scripts/device/pipeline-check.sh full13b     Wan2.1-1.3B (random bf16 weights, umT5-XXL, Wan VAE):
#                                                  50 steps, 832x480, 81 frames, wall time per stage
#   scripts/device/pipeline-check.sh forward14b  one Wan2.1-14B forward at 720p/81 frames: time, peak memory
# JSON and logs go to $OUT; a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
bin=$carry/bin
stages=${*:-tests parity full13b}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
summary=()

if [[ " $stages " == *" tests "* ]]; then
  timeout 180 "$bin/cuda_backend_test" >"$OUT/tests.log" 2>&1
  summary+=("cuda_backend_test: exit $? $(grep -E '^\[  (PASSED|FAILED) ' "$OUT/tests.log" | tr '\n' ' ')")
fi

if [[ " $stages " == *" parity "* ]]; then
  for device in cpu cuda; do
    "$bin/zoetrope" generate --model "$carry/models/tiny" --device "$device" --width 128 --height 128 --frames 17 \
      --steps 4 --seed 3 --format latent --output "$OUT/parity_$device.safetensors" 2>>"$OUT/parity.log" >/dev/null
  done
  "$bin/zoetrope" generate --model "$carry/models/tiny" --device cuda --width 128 --height 128 --frames 17 \
    --steps 10 --seed 3 --output /tmp/tiny_cuda.mp4 >>"$OUT/parity.log" 2>&1
  frames="$(stat -c %s /tmp/tiny_cuda.mp4 2>/dev/null || echo 0) bytes (exit $?)"
  parity=$(python3 - "$OUT/parity_cpu.safetensors" "$OUT/parity_cuda.safetensors" <<'PY'
import sys
sys.path.insert(0, "tests/reference")
import safetensors_io, torch
a = safetensors_io.load(sys.argv[1])["latent"].double()
b = safetensors_io.load(sys.argv[2])["latent"].double()
print(f"{((a - b).norm() / a.norm()).item():.3e} finite={bool(torch.isfinite(b).all())}")
PY
)
  summary+=("tiny 4-step latent, CUDA vs CPU: rel L2 $parity; tiny CUDA mp4 frames: $frames")
fi

if [[ " $stages " == *" full13b "* ]]; then
  model=/tmp/wan13b
  start=$(date +%s)
  "$bin/zoetrope-mkweights" --config wan2.1-t2v-1.3b --dtype bf16 --diffusers \
    -o $model/transformer/diffusion_pytorch_model.safetensors >/dev/null 2>&1
  "$bin/zoetrope-mkweights-text" --config umt5-xxl --dtype bf16 --hf_names -o $model/text_encoder/model.safetensors >/dev/null 2>&1
  "$bin/zoetrope-mkweights-vae" --config wan2.1-vae --diffusers -o $model/vae/diffusion_pytorch_model.safetensors >/dev/null 2>&1
  mkdir -p $model/tokenizer && cp "$carry/models/tiny/tokenizer/spiece.model" $model/tokenizer/
  summary+=("random 1.3B model folder written in $(( $(date +%s) - start )) s")
  start=$(date +%s%N)
  timeout 420 "$bin/zoetrope" generate --model $model --device cuda --width 832 --height 480 --frames 81 --steps 50 \
    --seed 0 --output "$OUT/wan13b_480p.mp4" >"$OUT/full13b.log" 2>&1
  status=$?
  end=$(date +%s%N)
  summary+=("1.3B 480p 81f 50 steps: exit $status, wall $(( (end - start) / 1000000 )) ms, mp4 $(stat -c %s "$OUT/wan13b_480p.mp4" 2>/dev/null || echo 0) bytes; $(grep -E '^loaded|^text |internal check' "$OUT/full13b.log" | tr '\n' ' ')")
fi

if [[ " $stages " == *" forward14b "* ]]; then
  timeout 500 "$bin/zoetrope-dit-bench" --config wan2.1-t2v-14b --device cuda --latent 16,21,90,160 \
    --workdir /tmp/wan14b --warmup 1 --iterations 2 >"$OUT/forward14b.json" 2>"$OUT/forward14b.log"
  summary+=("14B 720p forward: exit $? $(cat "$OUT/forward14b.json" | tr -d '\n' | cut -c1-400)")
fi

echo "==== summary ===="
printf '%s\n' "${summary[@]}"
