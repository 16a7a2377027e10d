#!/usr/bin/env bash
# Installs every Debian package Zoetrope needs to build, test and run on CPU.
# Idempotent: packages already present are left alone. CUDA is optional and not installed here:
# when /usr/local/cuda/bin/nvcc exists the CUDA targets are built too.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  # engine
  libopenblas-openmp-dev nlohmann-json3-dev
  # text encoder: spm_train (scripts/build-tokenizer.sh) and spm_encode (tests); the tokenizer itself
  # reads sentencepiece models without the library
  sentencepiece
  # video output: FFmpeg libraries (Debian 12's libavcodec59 carries the libx264 encoder)
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  # service and tooling (later layers link these; installing them early keeps one script)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  prometheus-cpp-dev libyaml-cpp-dev libsqlite3-dev libssl-dev
  # service tests: a Python gRPC client (stubs generated at test time) and a real Prometheus + promtool
  python3-grpcio python3-grpc-tools prometheus
  # clients/python build (setuptools) and the deploy/kubernetes render test (kubectl itself is not a Debian package)
  python3-setuptools python3-protobuf python3-yaml
  # tests
  libgtest-dev libgmock-dev python3 python3-torch python3-numpy ffmpeg
  # deploy tests: podman runs the scheduler image (runc where crun cannot, e.g. cgroup v1/v2 hybrid hosts);
  # node validates the Kubernetes objects (deploy/kubernetes/validate, npm packages installed below)
  podman runc nodejs
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

# npm comes with some nodejs builds (NodeSource's) and is a separate Debian package otherwise.
if ! command -v npm >/dev/null; then missing+=(npm); fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The Kubernetes, KEDA and prometheus-operator schemas (npm packages pinned by package-lock.json) for
# ctest deploy.kubernetes_schemas; reinstalled only when the lock file changes. Without the npm registry
# the test skips and says so.
validate="$(dirname "$0")/../deploy/kubernetes/validate"
if ! cmp -s "$validate/package-lock.json" "$validate/node_modules/.zoetrope-lock"; then
  if npm ci --prefix "$validate" --no-audit --no-fund --loglevel=error; then
    cp "$validate/package-lock.json" "$validate/node_modules/.zoetrope-lock"
  else
    echo "install-deps: npm ci in deploy/kubernetes/validate failed: deploy.kubernetes_schemas will skip" >&2
  fi
fi
