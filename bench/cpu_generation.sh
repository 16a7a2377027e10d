#!/usr/bin/env bash
# CPU speed of a tiny generation: prompt encoding, 10 denoising steps with CFG (20 DiT forwards), 17
# frames at 128×128 (latent [16, 5, 16, 16], 320 tokens), tiny models, on this machine's cores; the VAE
# is skipped (--format latent) so the number is the denoising loop's. Builds, checks the output is
# finite and deterministic, times 5 runs, writes JSON to bench/results/.
# The issue's budget for this run is 10 s on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build --target zoetrope zoetrope-mkweights zoetrope-mkweights-text zoetrope-mkweights-vae >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
scripts/make-model.sh --size tiny "$work/tiny" >/dev/null 2>&1
times=()
for run in 1 2 3 4 5; do
  start=$(date +%s%N)
  build/bin/zoetrope generate --model "$work/tiny" --width 128 --height 128 --frames 17 --steps 10 \
    --guidance 5 --seed 42 --format latent --output "$work/latent-$run.safetensors" >/dev/null 2>&1
  end=$(date +%s%N)
  times+=("$(( (end - start) / 1000 ))e-6")
done
cmp "$work/latent-1.safetensors" "$work/latent-5.safetensors"   # same seed, same bytes
/usr/bin/python3 - "$work/latent-1.safetensors" "${times[@]}" <<'PY'
import json, statistics, subprocess, sys, datetime, os, platform
sys.path.insert(0, "tests/reference")
import safetensors_io, torch
latent = safetensors_io.load(sys.argv[1])["latent"]
assert torch.isfinite(latent).all(), "non-finite latent"
times = [float(t) for t in sys.argv[2:]]
result = {
    "benchmark": "cpu_tiny_generation",
    "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "date": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z",
    "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    "shape": {"config": "tiny", "frames": 17, "width": 128, "height": 128, "latent": list(latent.shape),
              "tokens": 320, "steps": 10, "cfg": True, "forwards": 20},
    "seconds_each": times,
    "median_seconds": statistics.median(times),
    "budget_seconds": 10.0,
}
path = "bench/results/cpu_tiny_generation.json"
with open(path, "w") as f:
    json.dump(result, f, indent=2)
print(f"tiny 10-step CFG generation, 17x128x128, {os.cpu_count()} cores: median {result['median_seconds']:.3f} s "
      f"(budget 10 s) -> {path}")
PY
