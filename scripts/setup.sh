#!/usr/bin/env bash
# Creates .venv (Python >= 3.11) and installs the pinned requirements into it; re-runs are no-ops until a
# requirements file changes. Usage: scripts/setup.sh [requirements file] (default: requirements.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
req="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -c 'import sys; assert sys.version_info >= (3, 11), "perceiver-jax needs Python >= 3.11"'
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$req")"
want="$(cat requirements*.txt | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -r "$req"
  echo "$want" > "$stamp"
fi
