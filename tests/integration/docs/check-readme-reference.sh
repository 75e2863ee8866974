#!/usr/bin/env bash
# README.md's configuration reference must be what the option table says.
set -euo pipefail
llorch=$1 readme=$2
want=$("$llorch" config --reference)
have=$(sed -n '/<!-- config-reference:begin -->/,/<!-- config-reference:end -->/p' "$readme" | sed '1d;$d')
if [ "$want" != "$have" ]; then
  echo "README.md's configuration reference differs from 'llorch config --reference':"
  diff <(printf '%s\n' "$have") <(printf '%s\n' "$want") || true
  echo "run scripts/readme-config-reference.sh $llorch to update it"
  exit 1
fi
echo "README configuration reference matches the option table"
