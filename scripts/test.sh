#!/usr/bin/env bash
# Sets up .venv with the test extras (torch CPU, transformers, pytest) and runs the test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/test_text_parity.py -x.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-test.txt
exec .venv/bin/python -m pytest "${@:-tests}" -q --durations=15
