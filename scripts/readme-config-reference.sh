#!/usr/bin/env bash
# Rewrites README.md's configuration reference from the option table:
#   scripts/readme-config-reference.sh path/to/llorch
# tests/integration/docs checks that README.md and the table agree.
set -euo pipefail
cd "$(dirname "$0")/.."
llorch=${1:-build/llorch}
ref=$("$llorch" config --reference)
python3 - "$ref" <<'PY'
import re, sys
readme = open("README.md").read()
begin, end = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"
i, j = readme.index(begin) + len(begin), readme.index(end)
open("README.md", "w").write(readme[:i] + "\n" + sys.argv[1] + "\n" + readme[j:])
PY
