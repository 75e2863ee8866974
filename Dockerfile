# llorch container image: `docker run IMAGE --role=pool --gpus=0,1 ...`
#
#   docker build -t llorch .                                  # CPU
#   docker build -t llorch:cuda --build-arg VARIANT=cuda .    # CUDA (NVIDIA's runtime base)
#
# Build stage: Debian 12 with the -dev packages; run stage: slim Debian 12
# (or NVIDIA's CUDA runtime image) with only the runtime libraries, a non-root
# user, models in a volume, configuration from a mounted file (--config) or
# LLORCH_* environment variables. SIGTERM drains as on bare metal (llorch is
# PID 1's child of tini-less exec form: it handles SIGTERM itself).
# scripts/build-image.sh builds the same CPU image offline, without a daemon.

ARG VARIANT=cpu
ARG CUDA_BUILD_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---- build ----
FROM debian:12 AS build-cpu
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libuv1-dev libcjson-dev libyaml-dev node-llhttp libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLLORCH_BUILD_TESTS=OFF -DLLORCH_CUDA=OFF \
    && cmake --build /build -j"$(nproc)" --target llorch \
    && mkdir -p /out && cp /build/llorch /out/

FROM ${CUDA_BUILD_IMAGE} AS build-cuda
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libuv1-dev libcjson-dev libyaml-dev node-llhttp libpcre2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DLLORCH_BUILD_TESTS=OFF -DLLORCH_CUDA=ON \
    && cmake --build /build -j"$(nproc)" --target llorch \
    && mkdir -p /out && cp /build/llorch /out/ \
    && if [ -f /build/libllorch_cuda.so ]; then cp /build/libllorch_cuda.so /out/; fi

FROM build-${VARIANT} AS build

# ---- run ----
FROM debian:12-slim AS run-cpu
FROM ${CUDA_RUNTIME_IMAGE} AS run-cuda

FROM run-${VARIANT}
RUN apt-get update && apt-get install -y --no-install-recommends \
      libuv1 libcjson1 libyaml-0-2 libpcre2-8-0 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/llorch --create-home llorch \
    && mkdir -p /models /etc/llorch && chown llorch /models
# the binary, and in CUDA builds the CUDA module it loads from its own directory
COPY --from=build /out/ /usr/local/bin/
COPY config/ /etc/llorch/examples/
USER llorch
VOLUME ["/models"]
# Inside a container the server must listen beyond loopback to be reachable,
# so the cluster token is required (LLORCH_*_CLUSTER_TOKEN or the config file).
ENV LLORCH_LISTEN=0.0.0.0:8080 \
    LLORCH_POOL_MODEL_DIRS=/models
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS "http://127.0.0.1:${LLORCH_LISTEN##*:}/health/live" || exit 1
STOPSIGNAL SIGTERM
ENTRYPOINT ["llorch"]
CMD ["--help"]
