#!/usr/bin/env bash
# The Hugging Face reference renderings (tests/data/chat-templates, see its
# README): every rendering byte-identical through `llorch chat-template`, and
# every refusal refused (exit 1 with the template's error on stderr).
# usage: chat_template_acceptance.sh LLORCH_BIN DATA_DIR
set -u
bin=$1
data=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ok=0 ok_total=0 ref=0 ref_total=0 failures=0
while IFS=$'\t' read -r tmpl conv status _; do
  [ -n "$tmpl" ] || continue
  args=(chat-template --template "$data/templates/$tmpl.jinja" --request "$data/requests/$conv.json"
        --bos-token '<BOS>' --eos-token '<EOS>' --now 2026-11-22T19:02:00)
  timeout 20 "$bin" "${args[@]}" >"$tmp/out" 2>"$tmp/err"
  rc=$?
  if [ "$status" = ok ]; then
    ok_total=$((ok_total + 1))
    if [ $rc -eq 0 ] && cmp -s "$tmp/out" "$data/expected/$tmpl/$conv.txt"; then
      ok=$((ok + 1))
    else
      failures=$((failures + 1))
      echo "FAIL render $tmpl / $conv (exit $rc): $(head -c 300 "$tmp/err")"
    fi
  else
    ref_total=$((ref_total + 1))
    if [ $rc -eq 1 ] && [ -s "$tmp/err" ] && [ ! -s "$tmp/out" ]; then
      ref=$((ref + 1))
    else
      failures=$((failures + 1))
      echo "FAIL refuse $tmpl / $conv (exit $rc, expected: $(cat "$data/expected/$tmpl/$conv.err"))"
    fi
  fi
done <"$data/expected/index.tsv"
echo "renderings byte-identical: $ok/$ok_total"
echo "refusals refused: $ref/$ref_total"
[ "$failures" -eq 0 ] && [ "$ok_total" -eq 472 ] && [ "$ref_total" -eq 18 ]
