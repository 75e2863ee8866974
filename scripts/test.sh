#!/usr/bin/env bash
# Sets up and runs every llorch test on a fresh Debian 12 machine:
#   1. installs the Debian/npm dependencies (scripts/install-deps.sh),
#   2. a warnings-as-errors build (with the CUDA backend compiled when nvcc
#      is present) and the whole ctest suite,
#   3. an ASan/UBSan build and the suite again (minus the llama.cpp
#      reference comparison, which measures numerics, not memory safety),
#   4. a clang libFuzzer build running each fuzz target for a bounded time.
# Environment: LLORCH_JOBS (build parallelism, default nproc),
# LLORCH_FUZZ_SECONDS (per fuzz target, default 30), LLORCH_TEST_STAGES
# (default "build asan fuzz").
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${LLORCH_JOBS:-$(nproc)}
stages=${LLORCH_TEST_STAGES:-"build asan fuzz"}
export LLORCH_FUZZ_SECONDS=${LLORCH_FUZZ_SECONDS:-30}

step() { printf '\n==== %s ====\n' "$*"; }

step "dependencies"
scripts/install-deps.sh --with-npm

for stage in $stages; do
  case "$stage" in
    build)
      step "build (-Werror) and test"
      cmake -S . -B build -DLLORCH_WERROR=ON >/dev/null
      cmake --build build -j"$jobs"
      ctest --test-dir build --output-on-failure -j"$jobs"
      ;;
    asan)
      step "ASan/UBSan build and test"
      cmake -S . -B build-asan -DLLORCH_WERROR=ON -DLLORCH_CUDA=OFF \
            -DLLORCH_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug >/dev/null
      cmake --build build-asan -j"$jobs"
      ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-asan --output-on-failure -j"$jobs" -LE 'reference|fuzz|bench|image'
      ;;
    fuzz)
      step "libFuzzer targets, ${LLORCH_FUZZ_SECONDS}s each"
      CC=clang cmake -S . -B build-fuzz -DLLORCH_FUZZ=ON -DLLORCH_CUDA=OFF \
            -DLLORCH_FUZZ_SECONDS="$LLORCH_FUZZ_SECONDS" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
      cmake --build build-fuzz -j"$jobs" --target fuzz_all
      ctest --test-dir build-fuzz --output-on-failure -L fuzz
      ;;
    *) echo "unknown stage '$stage' (expected build, asan, fuzz)" >&2; exit 2 ;;
  esac
done
step "all test stages passed: $stages"
