#!/usr/bin/env bash
# The quick start: installs what the project needs, builds the tools, writes a tiny random model
# (DiT, umT5 text encoder, VAE, stand-in tokenizer), starts the service in embedded mode (scheduler and
# one local worker in one process), submits a prompt, watches its progress, downloads the MP4, and
# stops the service. Everything runs on the CPU of this machine, on loopback.
# Usage: scripts/quickstart.sh [extra flags for `zoetrope submit`]
set -euo pipefail
cd "$(dirname "$0")/.."
build=${ZOETROPE_BUILD_DIR:-build}
port=${ZOETROPE_QUICKSTART_PORT:-50051}

scripts/install-deps.sh
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target zoetrope zoetrope-mkweights zoetrope-mkweights-text zoetrope-mkweights-vae

model=models/tiny
if [ ! -f "$model/transformer/config.json" ]; then
  echo "writing tiny random model to $model"
  scripts/make-model.sh --size tiny --build-dir "$build" "$model" >/dev/null
fi
mkdir -p out
zoetrope=$build/bin/zoetrope
server=127.0.0.1:$port

"$zoetrope" serve --embedded --model "$model" --data_dir out/quickstart-data --listen "$server" \
  --metrics_port 0 >out/quickstart-serve.log 2>&1 &
serve_pid=$!
trap 'kill -TERM $serve_pid 2>/dev/null; wait $serve_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "listening on port" out/quickstart-serve.log && break
  kill -0 $serve_pid 2>/dev/null || { cat out/quickstart-serve.log >&2; exit 1; }
  sleep 0.1
done

# submit prints the job id first, then its final state; the progress bar goes to the terminal (stderr).
submitted=$("$zoetrope" submit --server "$server" --prompt "a paper boat drifting down a rainy street" \
  --width 128 --height 128 --frames 17 --steps 10 --seed 42 --watch "$@")
job=${submitted%%$'\n'*}
"$zoetrope" fetch --server "$server" "$job" --output out/quickstart.mp4 >/dev/null
echo "job $job: video written to out/quickstart.mp4"
