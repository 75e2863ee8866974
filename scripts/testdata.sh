#!/usr/bin/env bash
# Provides the test data that comes from packages rather than from this
# repository, so that a clone with nothing beside it can run every test:
#
#   scripts/testdata.sh OUTDIR
#
# OUTDIR/tokenizer/ gets llama.cpp's vocabulary-only GGUF files for Qwen2,
# Llama 3 (llama-bpe) and Llama 2 (llama-spm) with their expected token ids
# (NAME.gguf.inp / NAME.gguf.out). They are read from the llama.cpp source that
# the npm package node-llama-cpp ships as llama/gitRelease.bundle (installed
# for the tests by `scripts/install-deps.sh --with-npm`); nothing is downloaded
# here. ctest runs this as the `testdata` fixture into <build>/testdata and
# hands the folder to the tests as $LLORCH_TESTDATA.
#
# Every file is checked against the SHA-256 the tests were written for, so a
# different node-llama-cpp version fails here, saying so, instead of making the
# tokenizer tests fail in puzzling ways. Idempotent: files already in place with
# the right digest are kept.
set -euo pipefail

out=${1:?usage: scripts/testdata.sh OUTDIR}
here=$(cd "$(dirname "$0")/.." && pwd)
bundle=${LLORCH_LLAMA_BUNDLE:-$here/tests/reference/node_modules/node-llama-cpp/llama/gitRelease.bundle}

# name -> sha256 (llama.cpp's models/ folder in node-llama-cpp 3.22.1)
declare -A want=(
  [ggml-vocab-qwen2.gguf]=44c2f46b715f585c6ab513970e8a006bfa5badd6108560054921cf598d154d8c
  [ggml-vocab-qwen2.gguf.inp]=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
  [ggml-vocab-qwen2.gguf.out]=de785bb305cc6fa9d43908ed5da337f853c0b79e971348fcfb9f0915a39c5363
  [ggml-vocab-llama-bpe.gguf]=97272e430d53bc7688f52d5e0ad8ea8f163ede9f1bbd1694feaa504797d5d96e
  [ggml-vocab-llama-bpe.gguf.inp]=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
  [ggml-vocab-llama-bpe.gguf.out]=118abf2034a197fc5c9dec5204dfdeee7004c7c70952ae577f66b99e212fab9b
  [ggml-vocab-llama-spm.gguf]=16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69
  [ggml-vocab-llama-spm.gguf.inp]=be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0
  [ggml-vocab-llama-spm.gguf.out]=ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29
)

dest="$out/tokenizer"
digest_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

missing=()
for f in "${!want[@]}"; do
  digest_ok "$dest/$f" "${want[$f]}" || missing+=("$f")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "testdata: $dest is complete (${#want[@]} files)"
  exit 0
fi

if [ ! -f "$bundle" ]; then
  echo "testdata: cannot provide ${missing[*]}: $bundle not found." >&2
  echo "testdata: these files come from the npm package node-llama-cpp; install it with" \
       "'scripts/install-deps.sh --with-npm' (scripts/test.sh does this)." >&2
  exit 1
fi

mkdir -p "$dest"
work=$(mktemp -d "$out/.extract.XXXXXX")
trap 'rm -rf "$work"' EXIT
git init -q "$work/repo"
git -C "$work/repo" fetch -q "$bundle" HEAD
for f in "${missing[@]}"; do
  if ! git -C "$work/repo" show "FETCH_HEAD:models/$f" > "$work/$f"; then
    echo "testdata: models/$f is not in $bundle" >&2
    exit 1
  fi
  if ! digest_ok "$work/$f" "${want[$f]}"; then
    echo "testdata: models/$f in $bundle has SHA-256 $(sha256sum "$work/$f" | cut -d' ' -f1)," \
         "expected ${want[$f]}: the tests were written for node-llama-cpp 3.22.1" \
         "(tests/reference/package-lock.json)" >&2
    exit 1
  fi
  mv "$work/$f" "$dest/$f"     # same file system: the file appears whole or not at all
done
echo "testdata: extracted ${#missing[@]} file(s) into $dest"
