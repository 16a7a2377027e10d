# Sourced by device scripts after env.sh: make_13b_model writes, once per machine, a Wan2.1-1.3B model folder
# of random weights at $model (default /tmp/wan13b): bf16 DiT and umT5-XXL, f32 VAE, the stand-in tokenizer.
# The same folder pipeline-check.sh writes, so one machine makes it once.
model=${model:-/tmp/wan13b}
make_13b_model() {
  [[ -f $model/done ]] && return 0
  local bin=$carry/bin
  "$bin/zoetrope-mkweights" --config wan2.1-t2v-1.3b --dtype bf16 --diffusers \
    -o "$model/transformer/diffusion_pytorch_model.safetensors" >/dev/null 2>&1 || return 1
  "$bin/zoetrope-mkweights-text" --config umt5-xxl --dtype bf16 --hf_names \
    -o "$model/text_encoder/model.safetensors" >/dev/null 2>&1 || return 1
  "$bin/zoetrope-mkweights-vae" --config wan2.1-vae --diffusers \
    -o "$model/vae/diffusion_pytorch_model.safetensors" >/dev/null 2>&1 || return 1
  mkdir -p "$model/tokenizer" && cp "$carry/models/tiny/tokenizer/spiece.model" "$model/tokenizer/" || return 1
  touch "$model/done"
}
