#!/usr/bin/env bash
# `zoetrope generate` as a user runs it: a tiny model folder, a prompt, an MP4 that ffprobe reads with
# the right frame count, size and rate; the same seed gives the same file content, at any --threads;
# bad flags and a bad model folder exit non-zero with a message naming the flag or the missing part.
# usage: generate_test.sh ZOETROPE_BINARY MODEL_FOLDER WORK_DIR
set -euo pipefail
zoetrope=$1 model=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
failures=0 passed=0
check() {  # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failures=$((failures + 1)); echo "FAIL $name"; fi
}

"$zoetrope" generate --model "$model" --prompt "a cat on a skateboard" --width 96 --height 64 --frames 13 \
  --steps 4 --seed 5 --output "$work/a.mp4" >"$work/stdout" 2>"$work/stderr"
check "prints the video path" grep -qx "$work/a.mp4" "$work/stdout"
check "shows progress" grep -q "denoise" "$work/stderr"
probe=$(ffprobe -v error -count_frames -select_streams v:0 \
  -show_entries stream=codec_name,width,height,r_frame_rate,nb_read_frames -of csv=p=0 "$work/a.mp4")
check "mp4 is h264 96x64 at 16 fps with 13 frames ($probe)" test "$probe" = "h264,96,64,16/1,13"

"$zoetrope" generate --model "$model" --prompt "a cat on a skateboard" --width 96 --height 64 --frames 13 \
  --steps 4 --seed 5 --output "$work/b.safetensors" >/dev/null 2>&1
"$zoetrope" generate --model "$model" --prompt "a cat on a skateboard" --width 96 --height 64 --frames 13 \
  --steps 4 --seed 5 --output "$work/c.safetensors" >/dev/null 2>&1
check "same seed, same video" cmp -s "$work/b.safetensors" "$work/c.safetensors"
# The CPU backend's results do not depend on how many threads compute them (kernels/cpu/cpu_gemm.h).
for threads in 1 2 3; do
  "$zoetrope" generate --model "$model" --prompt "a cat on a skateboard" --width 96 --height 64 --frames 13 \
    --steps 4 --seed 5 --threads "$threads" --output "$work/threads$threads.safetensors" >/dev/null 2>&1
  check "--threads $threads gives the same bytes as the default" cmp -s "$work/b.safetensors" "$work/threads$threads.safetensors"
done
"$zoetrope" generate --model "$model" --width 96 --height 64 --frames 5 --steps 2 --output "$work/png" >/dev/null 2>&1
check "png frames" test -f "$work/png/frame_00004.png"

# Every sparsity preset runs a whole generation; the plan's block density is reported. 33 frames at
# 256×256 (2,304 tokens) so that the sparse presets have blocks to skip.
for preset in dense radial attention-tile sliding-tile; do
  if "$zoetrope" generate --model "$model" --width 256 --height 256 --frames 33 --steps 4 --seed 5 \
       --attention "$preset" --output "$work/$preset.safetensors" >/dev/null 2>"$work/$preset.err"; then
    check "--attention $preset reports its density" grep -q "attention $preset: mean block density" "$work/$preset.err"
  else
    check "--attention $preset exits 0 ($(tail -2 "$work/$preset.err"))" false
  fi
done
check "radial is sparser than dense" grep -q "mean block density 0\." "$work/radial.err"
printf 'rules:\n  - mode: radial\n    decay: -1\n' >"$work/bad-plan.yaml"

expect_error() {  # expect_error NAME TEXT FLAGS...
  local name=$1 text=$2; shift 2
  if "$zoetrope" generate --model "$model" --steps 1 --frames 5 --width 32 --height 32 --output "$work/x.mp4" "$@" \
       >/dev/null 2>"$work/err"; then
    check "$name exits non-zero" false
  else
    check "$name names '$text'" grep -q -- "$text" "$work/err"
  fi
}
expect_error "width" "width: must be a multiple of 16" --width 100
expect_error "frames" "frames: must be 4n+1" --frames 8
expect_error "steps" "steps: must be in" --steps 0
expect_error "sampler" "sampler" --sampler heun
expect_error "device" "device" --device tpu
expect_error "model folder" "missing" --model "$work"
expect_error "plan file" "bad-plan.yaml:3" --attention "$work/bad-plan.yaml"
expect_error "plan name" "neither a preset" --attention "no-such-plan"
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
