#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: install dependencies, build
# llorch, synthesize a demo model (random weights of a real shape - nothing
# can be downloaded) into ./models, and serve it with an orchestrator and a
# local pool manager in one process (`llorch --role=all`) on 127.0.0.1:8080.
# Extra arguments are passed to llorch (e.g. --listen 0.0.0.0:8080 --cluster-token T
# --api-key K: beyond loopback a cluster token is required, see README "Security").
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build-release -DCMAKE_BUILD_TYPE=Release -DLLORCH_BUILD_TESTS=OFF >/dev/null
cmake --build build-release -j"$(nproc)" --target llorch

mkdir -p models
if [ ! -f models/demo.gguf ]; then
  build-release/llorch synth --arch qwen2 --layers 4 --embd 512 --ff 1408 --heads 8 --kv-heads 2 \
    --type q8_0 --seed 1 -o models/demo.gguf
fi
exec build-release/llorch --role=all --config config/all.yaml "$@"
