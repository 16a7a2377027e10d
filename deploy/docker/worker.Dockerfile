# The worker image: zoetrope-worker built with the CUDA backend and NCCL, on a CUDA runtime base with
# cuBLAS, cuDNN and NCCL plus the Debian 12 runtime libraries it loads, running as uid/gid 10001.
#
#   docker build -f deploy/docker/worker.Dockerfile -t zoetrope-worker .   (from the repository root)
#
# Both stages are Debian 12 with NVIDIA's CUDA repository for Debian 12, so the binary runs against the
# same Debian libraries (gRPC, FFmpeg, OpenBLAS) it was built with; NVIDIA's own nvidia/cuda images are
# Ubuntu-based and carry other versions of those. The NVIDIA driver (libcuda, NVML) is not in the image:
# the NVIDIA container toolkit / GPU operator mounts it, selected by NVIDIA_VISIBLE_DEVICES.
# Without registry access: deploy/docker/assemble-offline.py worker --build-dir build (docs/deploy.md).

ARG DEBIAN=debian:12
ARG DEBIAN_SLIM=debian:12-slim
# CUDA major.minor of NVIDIA's packages (cuda-nvcc-12-8, ...); sm_90a needs 12.0 or later.
ARG CUDA_VERSION=12.8
ARG CUDA_REPOSITORY=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64

FROM ${DEBIAN} AS build
ARG CUDA_VERSION
ARG CUDA_REPOSITORY
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL -o /tmp/cuda-keyring.deb ${CUDA_REPOSITORY}/cuda-keyring_1.1-1_all.deb \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && cuda=$(echo ${CUDA_VERSION} | tr . -) \
 && apt-get update && apt-get install -y --no-install-recommends \
      cuda-nvcc-${cuda} cuda-cudart-dev-${cuda} libcublas-dev-${cuda} libnccl-dev \
      build-essential cmake ninja-build pkg-config python3 \
      libopenblas-openmp-dev nlohmann-json3-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      prometheus-cpp-dev libyaml-cpp-dev libsqlite3-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF -DZOETROPE_CUDA=ON \
      -DCMAKE_CUDA_COMPILER=/usr/local/cuda-${CUDA_VERSION}/bin/nvcc \
 && cmake --build /build --target zoetrope-worker \
 && strip /build/bin/zoetrope-worker \
 && deploy/docker/runtime-packages.sh /build/bin/zoetrope-worker > /build/runtime-packages

# The CUDA runtime base: CUDA runtime, cuBLAS, cuDNN and NCCL on Debian 12 slim.
FROM ${DEBIAN_SLIM} AS cuda-runtime
ARG CUDA_VERSION
ARG CUDA_REPOSITORY
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
 && curl -fsSL -o /tmp/cuda-keyring.deb ${CUDA_REPOSITORY}/cuda-keyring_1.1-1_all.deb \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && cuda=$(echo ${CUDA_VERSION} | tr . -) \
 && apt-get update && apt-get install -y --no-install-recommends \
      cuda-cudart-${cuda} libcublas-${cuda} libnccl2 libcudnn9-cuda-12 \
 && apt-get purge -y curl && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
 && echo /usr/local/cuda-${CUDA_VERSION}/targets/x86_64-linux/lib > /etc/ld.so.conf.d/zoetrope-cuda.conf \
 && ldconfig
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility

FROM cuda-runtime
# The Debian packages holding the libraries the worker loads (runtime-packages.sh; the CUDA ones are
# already installed above), nothing else. coreutils' sleep serves the preStop hook.
COPY --from=build /build/runtime-packages /tmp/runtime-packages
RUN apt-get update && apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
 && groupadd --gid 10001 zoetrope \
 && useradd --uid 10001 --gid 10001 --home-dir /work --no-create-home --shell /usr/sbin/nologin zoetrope \
 && mkdir /work && chown 10001:10001 /work
COPY --from=build /build/bin/zoetrope-worker /usr/local/bin/zoetrope-worker
USER 10001:10001
WORKDIR /work
# /metrics; the worker serves no gRPC (it dials the scheduler's worker port).
EXPOSE 9465
ENTRYPOINT ["/usr/local/bin/zoetrope-worker"]
CMD ["--scheduler=zoetrope-scheduler:50052", "--model=/models/model", "--device=cuda", "--work_dir=/work", "--metrics_port=9465"]
