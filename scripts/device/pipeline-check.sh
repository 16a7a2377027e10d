#!/usr/bin/env bash
# GPU machine, the whole pipeline on CUDA. Carry build-cuda-carry (scripts/device/pack-cuda.sh --pipeline).
#   scripts/device/pipeline-check.sh tests       the CUDA tests (scripts/device/gpu-tests.sh)
#                                                  -> cuda_backend_test_<gpu>.json
#   scripts/device/pipeline-check.sh parity      tiny model: 4-step generation on CUDA vs CPU, same seed
#                                                  (latent relative L2), and an MP4 made on CUDA
#   scripts/device/pipeline-check.sh full13b     Wan2.1-1.3B (random bf16 weights, umT5-XXL, Wan VAE):
#                                                  50 steps, 832x480, 81 frames, seconds per stage
#                                                  -> pipeline_1.3b_480p_<gpu>.json
#   scripts/device/pipeline-check.sh full13b     (FULL13B_ATTENTION="dense radial": one generation per plan)
#                                                  -> pipeline_1.3b_480p[_radial]_<gpu>.json
#   scripts/device/pipeline-check.sh fidelity13b the same random 1.3B model: zoetrope-attention-fidelity per
#                                                  sparse preset (FIDELITY_STEPS, default 10 steps, 480p 81f)
#                                                  -> attention_fidelity_1.3b_480p_<preset>_<gpu>.json
#   scripts/device/pipeline-check.sh forward13b  one 1.3B 480p forward per plan (dense, radial, attention-tile,
#                                                  sliding-tile; a sparse step) -> dit_forward_1.3b_480p_<plan>_<gpu>.json
#   scripts/device/pipeline-check.sh forward14b  one Wan2.1-14B forward at 720p/81 frames: time, peak memory,
#                                                  dense and radial -> dit_forward_14b_720p[_radial]_<gpu>.json
# Results go to $OUT/bench-results (bench/write_result.py), logs to $OUT/logs; a short table is printed
# last. Exits non-zero when any stage failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
bin=$carry/bin
stages=${*:-tests parity full13b}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "commit $ZOETROPE_COMMIT; results in $results (tag $gpu_tag)"
summary=()
failed=0

if [[ " $stages " == *" tests "* ]]; then
  scripts/device/gpu-tests.sh >"$logs/gpu-tests.out" 2>&1
  test_status=$?
  (( test_status == 0 )) || failed=1
  summary+=("cuda_backend_test: exit $test_status; $(grep -E '^\[  (PASSED|FAILED) |ran,' "$logs/gpu-tests.out" | tr '\n' ' ')")
fi

parity_l2=
if [[ " $stages " == *" parity "* ]]; then
  for device in cpu cuda; do
    "$bin/zoetrope" generate --model "$carry/models/tiny" --device "$device" --width 128 --height 128 --frames 17 \
      --steps 4 --seed 3 --format latent --output "$logs/parity_$device.safetensors" 2>>"$logs/parity.log" >/dev/null
  done
  "$bin/zoetrope" generate --model "$carry/models/tiny" --device cuda --width 128 --height 128 --frames 17 \
    --steps 10 --seed 3 --output /tmp/tiny_cuda.mp4 >>"$logs/parity.log" 2>&1
  frames="$(stat -c %s /tmp/tiny_cuda.mp4 2>/dev/null || echo 0) bytes (exit $?)"
  parity=$(python3 - "$logs/parity_cpu.safetensors" "$logs/parity_cuda.safetensors" <<'PY'
import sys
sys.path.insert(0, "tests/reference")
import safetensors_io, torch
a = safetensors_io.load(sys.argv[1])["latent"].double()
b = safetensors_io.load(sys.argv[2])["latent"].double()
print(f"{((a - b).norm() / a.norm()).item():.3e} finite={bool(torch.isfinite(b).all())}")
PY
)
  [[ $parity == *finite=True ]] && parity_l2=${parity%% *} || failed=1
  summary+=("tiny 4-step latent, CUDA vs CPU: rel L2 $parity; tiny CUDA mp4: $frames")
fi

model=/tmp/wan13b
make_13b_model() {  # once per machine: random bf16 DiT and umT5-XXL, f32 VAE, the stand-in tokenizer
  [[ -f $model/done ]] && return 0
  local start=$(date +%s)
  "$bin/zoetrope-mkweights" --config wan2.1-t2v-1.3b --dtype bf16 --diffusers \
    -o $model/transformer/diffusion_pytorch_model.safetensors >/dev/null 2>&1
  "$bin/zoetrope-mkweights-text" --config umt5-xxl --dtype bf16 --hf_names -o $model/text_encoder/model.safetensors >/dev/null 2>&1
  "$bin/zoetrope-mkweights-vae" --config wan2.1-vae --diffusers -o $model/vae/diffusion_pytorch_model.safetensors >/dev/null 2>&1
  mkdir -p $model/tokenizer && cp "$carry/models/tiny/tokenizer/spiece.model" $model/tokenizer/
  model_seconds=$(( $(date +%s) - start ))
  summary+=("random 1.3B model folder written in $model_seconds s")
  touch $model/done
}
model_seconds=0

for attention in ${FULL13B_ATTENTION:-dense radial}; do
  [[ " $stages " == *" full13b "* ]] || break
  make_13b_model
  width=832 height=480 frames=81 steps=50 guidance=5 seed=0
  suffix=$([[ $attention == dense ]] || echo "_$attention")
  # The MP4 of random weights is noise: it stays on the GPU machine (its size goes into the result).
  video=/tmp/wan13b_480p$suffix.mp4
  rm -f "$video"
  start=$(date +%s%N)
  timeout 420 "$bin/zoetrope" generate --model $model --device cuda --width $width --height $height --frames $frames \
    --steps $steps --guidance $guidance --seed $seed --attention $attention --output "$video" \
    >"$logs/full13b$suffix.log" 2>&1
  status=$?
  end=$(date +%s%N)
  wall=$(( (end - start) / 1000 ))e-6
  python3 bench/convert_results.py generate-log --log "$logs/full13b$suffix.log" --exit-status $status \
    --wall-s "$wall" --name "pipeline_1.3b_480p${suffix}_{gpu}" --results-dir "$results" \
    --shape model=wan2.1-t2v-1.3b --shape text_encoder=umt5-xxl --shape vae=wan2.1-vae \
    --shape width=$width --shape height=$height --shape frames=$frames --shape steps=$steps \
    --shape guidance=$guidance --shape cfg=true --shape dit_forwards=$(( 2 * steps )) --shape sampler=unipc \
    --shape seed=$seed --shape "latent=[16,$(( (frames - 1) / 4 + 1 )),$(( height / 8 )),$(( width / 8 ))]" \
    --shape tokens=$(( ((frames - 1) / 4 + 1) * (height / 16) * (width / 16) )) \
    --field "weights=random: DiT and umT5-XXL bf16, VAE f32, stand-in tokenizer (zoetrope-mkweights*)" \
    --field model_write_s=$model_seconds --field mp4_bytes=$(stat -c %s "$video" 2>/dev/null || echo 0) \
    ${parity_l2:+--field tiny_4_step_latent_cuda_vs_cpu_rel_l2=$parity_l2} >"$logs/full13b$suffix.result" 2>&1
  convert=$?
  (( status == 0 && convert == 0 )) || failed=1
  summary+=("1.3B 480p 81f 50 steps, $attention: exit $status, wall $(( (end - start) / 1000000 )) ms; $(cat "$logs/full13b$suffix.result" | tr '\n' ' ')")
done

for preset in ${FIDELITY_PRESETS:-radial attention-tile sliding-tile}; do
  [[ " $stages " == *" fidelity13b "* ]] || break
  make_13b_model
  fidelity_steps=${FIDELITY_STEPS:-10}
  timeout 400 "$bin/zoetrope-attention-fidelity" --model $model --device cuda --plan "$preset" --width 832 \
    --height 480 --frames 81 --steps "$fidelity_steps" --seed 0 -o "$logs/fidelity_$preset.json" \
    >"$logs/fidelity_$preset.log" 2>&1
  status=$?
  python3 bench/convert_results.py fidelity --report "$logs/fidelity_$preset.json" --exit-status $status \
    --name "attention_fidelity_1.3b_480p_${preset}_{gpu}" --results-dir "$results" \
    --shape model=wan2.1-t2v-1.3b --shape width=832 --shape height=480 --shape frames=81 \
    --shape steps="$fidelity_steps" --shape plan="$preset" \
    --field "weights=random bf16 (zoetrope-mkweights): fidelity of random weights, not of a trained model" \
    >"$logs/fidelity_$preset.result" 2>&1 || failed=1
  summary+=("fidelity $preset ($fidelity_steps steps): exit $status; $(tail -2 "$logs/fidelity_$preset.log" | tr '\n' ' ')")
done

for attention in ${FORWARD13B_ATTENTION:-dense radial attention-tile sliding-tile}; do
  [[ " $stages " == *" forward13b "* ]] || break
  warmup=1 iterations=5
  timeout 300 "$bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda --latent 16,21,60,104 \
    --workdir /tmp/wan13b-forward --reuse_weights --attention "$attention" --step 20 --steps 50 \
    --warmup $warmup --iterations $iterations >"$logs/forward13b_$attention.json" 2>"$logs/forward13b_$attention.log"
  status=$?
  python3 bench/convert_results.py dit-bench --json "$logs/forward13b_$attention.json" --exit-status $status \
    --warmup $warmup --iterations $iterations --name "dit_forward_1.3b_480p_${attention}_{gpu}" \
    --results-dir "$results" --shape config=wan2.1-t2v-1.3b --shape "latent=[16,21,60,104]" --shape tokens=32760 \
    --shape frames=81 --shape width=832 --shape height=480 --shape text_tokens=128 --shape attention="$attention" \
    --shape step=20 --field "weights=random bf16 (zoetrope-mkweights)" >"$logs/forward13b_$attention.result" 2>&1
  convert=$?
  (( status == 0 && convert == 0 )) || failed=1
  summary+=("1.3B 480p forward, $attention: exit $status; $(cat "$logs/forward13b_$attention.result" | tr '\n' ' ')")
done

for attention in ${FORWARD14B_ATTENTION:-dense radial}; do
  [[ " $stages " == *" forward14b "* ]] || break
  warmup=1 iterations=3
  suffix=$([[ $attention == dense ]] || echo "_$attention")
  timeout 540 "$bin/zoetrope-dit-bench" --config wan2.1-t2v-14b --device cuda --latent 16,21,90,160 \
    --workdir /tmp/wan14b --reuse_weights --attention "$attention" --step 20 --steps 50 --warmup $warmup \
    --iterations $iterations >"$logs/forward14b$suffix.json" 2>"$logs/forward14b$suffix.log"
  status=$?
  python3 bench/convert_results.py dit-bench --json "$logs/forward14b$suffix.json" --exit-status $status \
    --warmup $warmup --iterations $iterations --name "dit_forward_14b_720p${suffix}_{gpu}" --results-dir "$results" \
    --shape config=wan2.1-t2v-14b --shape "latent=[16,21,90,160]" --shape tokens=75600 --shape frames=81 \
    --shape width=1280 --shape height=720 --shape text_tokens=128 --shape attention="$attention" --shape step=20 \
    --field "weights=random bf16 (zoetrope-mkweights)" >"$logs/forward14b$suffix.result" 2>&1
  convert=$?
  (( status == 0 && convert == 0 )) || failed=1
  summary+=("14B 720p forward, $attention: exit $status; $(cat "$logs/forward14b$suffix.result" | tr '\n' ' ')")
done

echo "==== summary ===="
printf '%s\n' "${summary[@]}"
ls -l "$results"
exit $failed
