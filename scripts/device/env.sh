# Sourced by the device scripts (from the repository root): library paths of the GPU machine plus the
# packed Debian libraries, the commit the carried build was made from, and where files go:
#   $OUT/bench-results/  result files (JSON, profile logs), named NAME_<gpu>.json, written through
#                        bench/write_result.py; copy them to bench/results/ and commit them
#   $OUT/logs/           raw logs and intermediate files
# (8 files at most come back from $OUT: keep bench-results small and pack logs/ into one archive.)
carry=${ZOETROPE_CARRY:-build-cuda-carry}
nvidia_pip=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$PWD/$carry/lib:$nvidia_pip/cu13/lib:$nvidia_pip/nccl/lib:$nvidia_pip/cudnn/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export ZOETROPE_COMMIT=${ZOETROPE_COMMIT:-$(cat "$carry/commit" 2>/dev/null || echo unknown)}
export PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/zoetrope-out}
export ZOETROPE_RESULTS_DIR=${ZOETROPE_RESULTS_DIR:-$OUT/bench-results}
results=$ZOETROPE_RESULTS_DIR
logs=$OUT/logs
mkdir -p "$OUT" "$results" "$logs"
# Short lowercase device tag for file names (h200, h100, ...), from nvidia-smi.
gpu_tag=$(python3 bench/write_result.py --print-device-tag)
