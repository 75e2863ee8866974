#!/usr/bin/env bash
# Installs what llorch needs to build on Debian 12; with --with-npm also what
# its tests need (Debian packages, and the npm packages of tests/e2e,
# tests/e2e/dashboard and tests/reference). Idempotent: packages already
# present are not reinstalled.
set -euo pipefail

pkgs=(build-essential cmake pkg-config git curl ca-certificates
      libuv1-dev libcjson-dev libyaml-dev node-llhttp libpcre2-dev libcmocka-dev)
if [ "${1:-}" = "--with-npm" ]; then
  # clang: the fuzz stage; iproute2: network-namespace tests; mmdebstrap: the
  # container image test; chromium: the dashboard's browser test.
  pkgs+=(clang libclang-rt-14-dev iproute2 python3 python3-yaml nodejs npm mmdebstrap
         chromium fonts-liberation)
fi

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node/npm may come from outside Debian (nodesource, nvm): accept any working node >= 18.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=("${missing[@]/nodejs}"); missing=("${missing[@]/npm}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q
  $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The npm packages are only for the tests (the openai client, llama.cpp as the
# reference): scripts/test.sh asks for them.
[ "${1:-}" = "--with-npm" ] || exit 0
here=$(cd "$(dirname "$0")/.." && pwd)
# Installed again whenever a dependency in package.json has no folder yet
# (a test added one since the last install).
npm_missing() {
  node -e 'const p = require(process.argv[1] + "/package.json"); const fs = require("fs");
    const miss = Object.keys(p.dependencies || {}).filter(d => !fs.existsSync(process.argv[1] + "/node_modules/" + d));
    process.exit(miss.length ? 0 : 1);' "$1"
}
# tests/e2e/dashboard: playwright-core, which drives Debian's chromium in the
# dashboard's browser test (it downloads no browser of its own).
for dir in "$here/tests/e2e" "$here/tests/e2e/dashboard"; do
  if [ -f "$dir/package.json" ] && npm_missing "$dir"; then
    (cd "$dir" && npm install --no-audit --no-fund --loglevel=error)
  fi
done
# llama.cpp as the reference (tests/reference): node-llama-cpp's prebuilt CPU
# binaries only. Its optional CUDA/Vulkan variants are left out and its
# postinstall (which would build or download llama.cpp) is not run; `npm ci`
# cannot be used because the lock file leaves out the other platforms'
# optional packages.
if [ -f "$here/tests/reference/package.json" ] &&
   [ ! -d "$here/tests/reference/node_modules/@node-llama-cpp/linux-x64" ]; then
  (cd "$here/tests/reference" && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true \
     npm install --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
