#!/bin/sh
# Differential check of llorch's tokenizers against llama.cpp (the prebuilt
# binaries node-llama-cpp ships, tests/reference/): a few hundred awkward
# strings (gen_texts.py) are tokenized by llama.cpp for each of llama.cpp's vocabularies
# and for the same vocabulary under other pre-tokenizers (default, gpt-2,
# starcoder) and the synthetic one, in plain and special-parsing mode; then
# test_tok_vectors checks llorch gives the same ids.
#   diff_llamacpp.sh TEST_TOK_VECTORS MKVOCAB TESTDATA_DIR  (scripts/testdata.sh output)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
vectors=$1 mkvocab=$2 testdata=$3
work=$(mktemp -d /tmp/llorch-tokdiff-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/plain" "$work/special"
python3 "$here/gen_texts.py" "$work/texts.inp" 400
python3 "$here/gen_texts.py" "$work/special.inp" 0 --special 300
td="$testdata/tokenizer"
for v in qwen2 llama-bpe llama-spm; do
  ln -s "$td/ggml-vocab-$v.gguf" "$work/plain/"
  ln -s "$td/ggml-vocab-$v.gguf" "$work/special/"
done
"$mkvocab" "$td/ggml-vocab-qwen2.gguf" "$work/plain/ggml-vocab-default.gguf" default
"$mkvocab" "$td/ggml-vocab-qwen2.gguf" "$work/plain/ggml-vocab-gpt2.gguf" gpt-2
"$mkvocab" "$td/ggml-vocab-qwen2.gguf" "$work/plain/ggml-vocab-starcoder.gguf" starcoder
"$mkvocab" - "$work/plain/ggml-vocab-synth.gguf" synth
for f in "$work"/plain/*.gguf; do
  cp "$work/texts.inp" "$f.inp"
  node "$here/llamacpp_tokenize.mjs" "$f" "$f.inp" "$f.out" 2>/dev/null
done
for f in "$work"/special/*.gguf; do
  cp "$work/special.inp" "$f.inp"
  node "$here/llamacpp_tokenize.mjs" "$f" "$f.inp" "$f.out" --special 2>/dev/null
done
LLORCH_TOK_VECTORS="$work/plain" "$vectors"
LLORCH_TOK_VECTORS="$work/special" LLORCH_TOK_SPECIAL=1 "$vectors"
