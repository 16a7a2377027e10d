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
)

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
