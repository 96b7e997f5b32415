#!/usr/bin/env bash
# Sets up .venv and runs the main job: byte-level masked-LM pretraining on the embedded corpus
# (configs/mlm_tiny.py). Extra arguments go to the trainer, e.g. --config.num_train_steps=2000.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
exec .venv/bin/python -m train --config configs/mlm_tiny.py --workdir "${WORKDIR:-runs/mlm_tiny}" "$@"
