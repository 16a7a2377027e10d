# The scheduler image: zoetrope-scheduler on Debian 12 slim with only the runtime libraries it loads,
# running as the non-root user zoetrope (uid/gid 10001, as deploy/kubernetes expects).
#
#   docker build -f deploy/docker/scheduler.Dockerfile -t zoetrope-scheduler .   (from the repository root)
#
# Without access to a registry for the base images: deploy/docker/assemble-offline.py scheduler builds the
# equivalent image from a local build tree (docs/deploy.md).

ARG DEBIAN=debian:12
ARG DEBIAN_SLIM=debian:12-slim

FROM ${DEBIAN} AS build
# The configure step looks for every library of the project, so all development packages are here even
# though only the scheduler is compiled.
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config python3 \
      libopenblas-openmp-dev nlohmann-json3-dev libavcodec-dev libavformat-dev libavutil-dev libswscale-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev \
      prometheus-cpp-dev libyaml-cpp-dev libsqlite3-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DZOETROPE_CUDA=OFF -DBUILD_TESTING=OFF \
 && cmake --build /build --target zoetrope-scheduler \
 && strip /build/bin/zoetrope-scheduler \
 && deploy/docker/runtime-packages.sh /build/bin/zoetrope-scheduler > /build/runtime-packages

FROM ${DEBIAN_SLIM}
# The Debian packages holding the libraries the binary loads (runtime-packages.sh), nothing else.
COPY --from=build /build/runtime-packages /tmp/runtime-packages
RUN apt-get update && apt-get install -y --no-install-recommends $(cat /tmp/runtime-packages) \
 && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages \
 && groupadd --gid 10001 zoetrope \
 && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin zoetrope \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /build/bin/zoetrope-scheduler /usr/local/bin/zoetrope-scheduler
USER 10001:10001
WORKDIR /data
# 50051: the public API (clients, health); 50052: the worker API; 9464: /metrics.
EXPOSE 50051 50052 9464
ENTRYPOINT ["/usr/local/bin/zoetrope-scheduler"]
# Listening beyond loopback needs the tokens file (docs/security.md): mount it at /etc/zoetrope/tokens.
CMD ["--listen=0.0.0.0:50051", "--worker_listen=0.0.0.0:50052", "--tokens_file=/etc/zoetrope/tokens", "--db=/data/jobs.db", "--results_dir=/data/results", "--metrics_port=9464"]
