#!/usr/bin/env bash
# Side-by-side speed: llama.cpp (node-llama-cpp 3.22.1's prebuilt CPU build)
# and `llorch bench` on the same Qwen2.5-0.5B-shaped files, alternating runs
# so that both see the same machine load. Not a test: it prints figures.
#
#   tests/reference/bench-compare.sh LLORCH_BIN [--reps N] [--threads N]
#                                    [--types "f16 q8_0"] [--dir DIR]
#                                    [--pp 512] [--tg 128]
#                                    [--llama-bench PATH] [--isa "avx512 avx2"]
#                                    [--baseline LLORCH_BIN2]
#
# --llama-bench: llama.cpp's own llama-bench (built from the source in
# node_modules/node-llama-cpp/llama/gitRelease.bundle with native flags, see
# docs/benchmarks.md) instead of the prebuilt library through node. --isa:
# llorch runs once per LLORCH_CPU_ISA value in each rep (default: the one it
# picks itself), so forced lower paths are compared in the same rep.
# --baseline: another llorch build (e.g. main's) run in each rep too, as
# "llorch-base", so a change is measured before/after under the same load.
#
# Models are made once with `llorch synth --preset qwen2.5-0.5b --vocab-from
# ggml-vocab-qwen2.gguf --type T` (494M params, like the real model) in
# DIR (default /tmp/llorch-bench) and kept for the next run. Each rep runs
# llama.cpp then llorch (pp = one prompt of --pp tokens, batch 512; tg =
# --tg single-token steps with logits); the medians over the reps and the
# ratios llorch / llama.cpp are printed last.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:?usage: bench-compare.sh LLORCH_BIN [--reps N] [--threads N] [--types \"f16 q8_0\"] [--dir DIR]}
shift
reps=3 threads=2 types="f16 q8_0" dir=/tmp/llorch-bench pp=512 tg=128 lbench="" isas="" base=""
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2 ;;
    --threads) threads=$2 ;;
    --types) types=$2 ;;
    --dir) dir=$2 ;;
    --pp) pp=$2 ;;
    --tg) tg=$2 ;;
    --llama-bench) lbench=$2 ;;
    --isa) isas=$2 ;;
    --baseline) base=$2 ;;
    *) echo "bench-compare.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift 2
done

export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
if [ ! -d "$here/node_modules/@node-llama-cpp/linux-x64" ]; then
  (cd "$here" && npm install --omit=optional --ignore-scripts --no-audit --no-fund >&2)
fi
mkdir -p "$dir"
# the real Qwen2 vocabulary, from the llama.cpp source in node-llama-cpp
"$here/../../scripts/testdata.sh" "$dir/testdata" >&2
vocab=$dir/testdata/tokenizer/ggml-vocab-qwen2.gguf
results=$(mktemp)
trap 'rm -f "$results"' EXIT

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs; threads $threads; pp $pp, tg $tg; $reps reps"
echo "cpu flags: $(grep -m1 -o -w -E 'avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512dq|avx512_vnni|avx512_bf16|avx_vnni' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "load at start: $(cut -d' ' -f1-3 /proc/loadavg)"
[ -n "$lbench" ] && echo "llama.cpp: $lbench" || echo "llama.cpp: node-llama-cpp's prebuilt CPU library"
for type in $types; do
  f="$dir/qwen2.5-0.5b-$type.gguf"
  # the real vocabulary (151936 tokens): the output layer is a quarter of the work
  [ -f "$f" ] || "$bin" synth --preset qwen2.5-0.5b --vocab-from "$vocab" --type "$type" -o "$f" >&2
  for r in $(seq 1 "$reps"); do
    echo "# $type rep $r: load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
    if [ -n "$lbench" ]; then
      # one JSON object per test (pp, tg): folded into one line of pp_tps / tg_tps
      ref=$("$lbench" -m "$f" -t "$threads" -p "$pp" -n "$tg" -r 1 -o jsonl 2>/dev/null | python3 -c '
import json, sys
o = {}
for l in sys.stdin:
    if not l.strip(): continue
    j = json.loads(l)
    o["pp_tps" if j["n_prompt"] else "tg_tps"] = j["avg_ts"]
print(json.dumps(o))')
    else
      ref=$(node "$here/llamacpp.mjs" bench "$f" --threads "$threads" --pp "$pp" --tg "$tg")
    fi
    echo "$type llama.cpp $ref" >> "$results"
    echo "  llama.cpp $ref (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    if [ -n "$base" ]; then
      mine=$("$base" bench --model "$f" --threads "$threads" --prompt-tokens "$pp" --gen-tokens "$tg" --reps 1 --json)
      echo "$type llorch-base $mine" >> "$results"
      echo "  llorch-base $mine (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    fi
    for isa in ${isas:-default}; do
      name=llorch
      if [ "$isa" != default ]; then name="llorch-$isa"; fi
      mine=$(if [ "$isa" != default ]; then export LLORCH_CPU_ISA=$isa; fi
             "$bin" bench --model "$f" --threads "$threads" --prompt-tokens "$pp" --gen-tokens "$tg" --reps 1 --json)
      echo "$type $name $mine" >> "$results"
      echo "  $name $mine (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    done
  done
done

# Medians and ratios. llamacpp.mjs bench prints pp_tps / tg_tps, llorch bench
# --json pp_tok_s / tg_tok_s (tokens/s). llama.cpp's tg steps include greedy
# sampling over the vocabulary and node-llama-cpp's per-call overhead (no
# logits can be had from it without a sampler call), llorch bench's do not:
# a bias of about 1-2% in llorch's favour at ~25 tok/s.
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    t, eng, js = line.split(" ", 2)
    o = json.loads(js[js.index("{"):])
    pp = o.get("pp_tps", o.get("pp_tok_s"))
    tg = o.get("tg_tps", o.get("tg_tok_s"))
    rows.setdefault((t, eng), []).append((pp, tg))
print(f"{'type':6} {'engine':10} {'pp tok/s':>9} {'tg tok/s':>9}   (median of reps)")
engines = list(dict.fromkeys(k[1] for k in rows))
for t in dict.fromkeys(k[0] for k in rows):
    med = {}
    for eng in engines:
        v = rows.get((t, eng), [])
        if not v: continue
        med[eng] = (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v))
        print(f"{t:6} {eng:10} {med[eng][0]:9.1f} {med[eng][1]:9.2f}   runs: " +
              ", ".join(f"{a:.1f}/{b:.2f}" for a, b in v))
    for eng in engines:
        if eng != "llama.cpp" and eng in med and "llama.cpp" in med:
            print(f"{t:6} {'ratio':10} {med[eng][0] / med['llama.cpp'][0]:9.2f} "
                  f"{med[eng][1] / med['llama.cpp'][1]:9.2f}   ({eng} / llama.cpp)")
EOF
