#!/usr/bin/env bash
# GPU machine: the Wan2.1 VAE decode at 832x480, 81 frames (latent 16,21,60,104), random F32 weights
# (zoetrope-mkweights-vae's, seed 0), one random latent, chunked as the pipeline decodes (1 latent frame):
#   1. the GPU tests of the VAE operators (Conv3d at every precision vs fp64, the tiled width-384
#      attention over 65,536 keys vs fp64), in required mode; fails when fewer than 3 ran or any failed;
#   2. zoetrope-vae-bench with ZOETROPE_CONV_PRECISION=fp32 (the accuracy reference, 1 timed run),
#      tf32 and bf16 (the default; ≥ 3 timed runs each, after a warm-up), and tf32 through cuDNN's
#      convolutions (ZOETROPE_CONV_ALGORITHM=cudnn, one per temporal tap; ≥ 3 timed runs);
#   3. the PyTorch baseline (bench/vae_baseline.py: tests/reference modules on cuDNN) in bf16 and in
#      fp32 with TF32 convolutions (PyTorch's default), same weights and latent, ≥ 3 timed runs each;
#   4. PSNR over the [-1, 1] frames of each decode against our fp32 decode (bench/vae_baseline.py psnr):
#      ours bf16 and tf32 (target ≥ 40 dB), and PyTorch's (an independent check that we decode the same video).
# Writes to $OUT/bench-results:
#   vae_decode_480p_pytorch_bf16_<gpu>.json, vae_decode_480p_pytorch_fp32_<gpu>.json   (vae_baseline.py)
#   vae_decode_480p_zoetrope_<gpu>.json   our bf16, tf32 and fp32 medians with spread, the PSNRs, the ratios
# Run from the repository root with build-cuda-pack carried (scripts/device/pack-cuda.sh):
#   scripts/device/run-packed.sh bench-vae.sh          (VAE_ITERATIONS=5 for more timed runs)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
latent=16,21,60,104 iterations=${VAE_ITERATIONS:-3}
work=/tmp/zoetrope-vae-bench
mkdir -p "$work"
failures=0

# 1. GPU tests of the new operators.
report=$logs/vae_gpu_tests.gtest.json
ZOETROPE_REQUIRE_GPU=1 timeout 300 "$carry/bin/cuda_backend_test" --gtest_output=json:"$report" \
  --gtest_filter='CudaBackendTest.Conv3dPrecisions*:CudaBackendTest.AttentionOver65536Keys*:CudaBackendTest.AttentionOfOtherHeadWidths*:CudaBackendTest.VideoVaeOps*' \
  >"$logs/vae_gpu_tests.log" 2>&1
test_status=$?
grep -E "^\[ +(OK|FAILED|PASSED|SKIPPED) |Failure" "$logs/vae_gpu_tests.log"
ran=$(grep -c "^\[       OK \]" "$logs/vae_gpu_tests.log")
echo "gpu tests: exit $test_status, $ran passed (expected 4)"
(( test_status == 0 && ran >= 4 )) || failures=$((failures + 1))

# 2. Ours at each Conv3d precision.
bench() {  # PRECISION WARMUP ITERATIONS [ALGORITHM (im2col, the default, or cudnn)]
  local algorithm=${4:-im2col} name=$1
  [[ $algorithm == im2col ]] || name=${algorithm}_$1
  ZOETROPE_CONV_PRECISION=$1 ZOETROPE_CONV_ALGORITHM=$algorithm "$carry/bin/zoetrope-vae-bench" --device cuda \
    --latent $latent --workdir "$work" --warmup "$2" --iterations "$3" --save "$work/ours_$name.safetensors" \
    >"$logs/vae_ours_$name.json" 2>"$logs/vae_ours_$name.log"
  local status=$?
  cat "$logs/vae_ours_$name.log" "$logs/vae_ours_$name.json"
  (( status == 0 )) || { echo "zoetrope-vae-bench ($name) failed: exit $status"; failures=$((failures + 1)); }
}
bench fp32 0 1
bench tf32 1 "$iterations"
bench bf16 1 "$iterations"
# cuDNN's implicit-GEMM convolutions (ZOETROPE_CONV_ALGORITHM=cudnn), TF32 as PyTorch's default.
bench tf32 1 "$iterations" cudnn

# 3. The PyTorch baseline, same weights and latent (written by zoetrope-vae-bench into $work).
for dtype in bf16 fp32; do
  python3 bench/vae_baseline.py time --weights "$work/vae.safetensors" --latent "$work/latent.safetensors" \
    --dtype $dtype --warmup 1 --iterations "$iterations" --save "$work/pytorch_$dtype.safetensors" \
    --name "vae_decode_480p_pytorch_${dtype}_{gpu}" --results-dir "$results" || failures=$((failures + 1))
done

# 4. PSNR against our fp32 decode, and the result file.
for test in ours_bf16 ours_tf32 ours_cudnn_tf32 pytorch_bf16 pytorch_fp32; do
  python3 bench/vae_baseline.py psnr --reference "$work/ours_fp32.safetensors" --test "$work/$test.safetensors" \
    >"$logs/psnr_$test.json" || echo '{"error": "psnr failed"}' >"$logs/psnr_$test.json"
  echo "PSNR $test vs ours fp32: $(cat "$logs/psnr_$test.json")"
done
python3 - "$logs" "$results" "$gpu_tag" "$latent" <<'PY' || failures=$((failures + 1))
import json, os, sys
sys.path.insert(0, "bench")
import write_result
logs, results, tag, latent = sys.argv[1:5]
def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
ours = {p: load(f"{logs}/vae_ours_{p}.json") for p in ("bf16", "tf32", "fp32", "cudnn_tf32")}
psnr = {t: load(f"{logs}/psnr_{t}.json")
        for t in ("ours_bf16", "ours_tf32", "ours_cudnn_tf32", "pytorch_bf16", "pytorch_fp32")}
baseline = {d: load(f"{results}/vae_decode_480p_pytorch_{d}_{tag}.json") for d in ("bf16", "fp32")}
fields = {"weights": "random F32 (zoetrope-mkweights-vae defaults, seed 0)", "chunk_frames": 1,
          "psnr_reference": "our fp32 decode (ZOETROPE_CONV_PRECISION=fp32)", "psnr": psnr}
for precision, result in ours.items():
    if result is None:
        continue
    fields[precision] = {**write_result.summary(result["samples"]), "peak_device_bytes": result["peak_device_bytes"]}
bf16 = ours.get("bf16")
for dtype, result in baseline.items():
    if result is not None and bf16 is not None:
        fields[f"speedup_vs_pytorch_{dtype}"] = result["median"] / write_result.summary(bf16["samples"])["median"]
cudnn = ours.get("cudnn_tf32")
for dtype, result in baseline.items():
    if result is not None and cudnn is not None:
        fields[f"cudnn_tf32_speedup_vs_pytorch_{dtype}"] = result["median"] / write_result.summary(cudnn["samples"])["median"]
if bf16 is not None:
    fields["meets_1p5s_target"] = write_result.summary(bf16["samples"])["median"] <= 1.5
if psnr["ours_bf16"] and isinstance(psnr["ours_bf16"].get("psnr_db"), (int, float, str)):
    value = psnr["ours_bf16"]["psnr_db"]
    fields["meets_40db_target"] = value == "inf" or float(value) >= 40.0
shape = {"latent": [int(x) for x in latent.split(",")], "frames": 81, "width": 832, "height": 480}
path = write_result.write("vae_decode_480p_zoetrope_{gpu}", fields, samples=bf16["samples"] if bf16 else None,
                          shape=shape, directory=results)
print(path)
print(json.dumps(json.load(open(path)), indent=1))
PY
echo "bench-vae: $failures failure(s)"
(( failures == 0 ))
