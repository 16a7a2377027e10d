# Sourced by the device scripts: library paths of the GPU machine plus the packed Debian libraries.
carry=${ZOETROPE_CARRY:-build-cuda-carry}
nvidia_pip=/opt/torch/.venv/lib/python3.12/site-packages/nvidia
export LD_LIBRARY_PATH=$PWD/$carry/lib:$nvidia_pip/cu13/lib:$nvidia_pip/nccl/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export ZOETROPE_COMMIT=$(cat "$carry/commit" 2>/dev/null || echo unknown)
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/zoetrope-out}
mkdir -p "$OUT"
