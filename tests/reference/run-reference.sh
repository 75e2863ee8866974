#!/usr/bin/env bash
# ctest "reference": llorch against llama.cpp (node-llama-cpp 3.22.1's prebuilt
# CPU binaries), token for token. Usage: run-reference.sh LLORCH_BIN [options
# of reference-test.mjs], run-reference.sh LLORCH_BIN --embed [options of
# embed-test.mjs] for the embeddings comparison, or run-reference.sh LLORCH_BIN
# --prompt-logprobs [options of prompt-logprobs-test.mjs] for echo's prompt
# logprobs. Exits 77 (ctest SKIP) when node/npm are missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: run-reference.sh LLORCH_BIN [options]}
shift

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node and npm are needed for the llama.cpp reference" >&2
  exit 77
fi
# Nothing may build or download llama.cpp: the prebuilt linux-x64 CPU binaries
# come from the npm registry, the CUDA/Vulkan variants (optional
# dependencies) are left out, and node-llama-cpp's postinstall is not run.
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
if [ ! -d "$here/node_modules/node-llama-cpp" ] || [ ! -d "$here/node_modules/@node-llama-cpp/linux-x64" ]; then
  echo "installing node-llama-cpp 3.22.1 (prebuilt CPU binaries) into $here/node_modules" >&2
  (cd "$here" && npm install --omit=optional --ignore-scripts --no-audit --no-fund >&2)
fi
script=reference-test.mjs
if [ "${1:-}" = "--embed" ]; then
  script=embed-test.mjs
  shift
elif [ "${1:-}" = "--prompt-logprobs" ]; then
  # echo's prompt logprobs against llama.cpp's logits
  script=prompt-logprobs-test.mjs
  shift
fi
exec node "$here/$script" --llorch "$bin" "$@"
