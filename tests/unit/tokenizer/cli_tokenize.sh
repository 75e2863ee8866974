#!/bin/sh
# `llorch tokenize` end to end: ids on one line, --special, --bos, --verbose,
# --file/stdin, and exit codes for a missing model (1) and bad usage (2).
#   cli_tokenize.sh LLORCH_BIN TESTDATA_DIR  (scripts/testdata.sh output)
set -u
bin=$1 td=$2/tokenizer
fail=0
check() { # name expected actual
  if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: expected [$2] got [$3]"; fail=1; fi
}
q=$td/ggml-vocab-qwen2.gguf
check plain "9707 1879" "$("$bin" tokenize --model "$q" --text "Hello world")"
check special-off "9707 27 91 318 6213 91 29" "$("$bin" tokenize --model "$q" --text "Hello<|im_end|>")"
check special-on "9707 151645" "$("$bin" tokenize --model "$q" --text "Hello<|im_end|>" --special)"
check bos-spm "1 15043 3186" "$("$bin" tokenize --model "$td/ggml-vocab-llama-spm.gguf" --text "Hello world" --bos)"
check bos-bpe "128000 9906" "$("$bin" tokenize --model "$td/ggml-vocab-llama-bpe.gguf" --text "Hello" --bos)"
check verbose "$(printf "9707 'Hello'\n1879 ' world'\n151645 '<|im_end|>'")" \
  "$("$bin" tokenize --model "$q" --text "Hello world<|im_end|>" --special --verbose)"
check stdin "9707 198" "$(printf 'Hello\n' | "$bin" tokenize --model "$q")"
# the first vector, read from a file, matches its .out line
first=$(mktemp)
awk 'BEGIN{RS="\n__ggml_vocab_test__\n"} NR==1{printf "%s", $0; exit}' "$q.inp" > "$first"
check file "$(head -n1 "$q.out" | sed 's/^ //')" "$("$bin" tokenize --model "$q" --file "$first")"
rm -f "$first"
"$bin" tokenize --model /nonexistent.gguf --text x 2>/dev/null
check missing-model 1 $?
"$bin" tokenize --text x 2>/dev/null
check no-model 2 $?
"$bin" tokenize --model "$q" --text x --bogus 2>/dev/null
check bad-flag 2 $?
exit $fail
