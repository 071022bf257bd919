#!/usr/bin/env bash
# The main job (README): set up .venv if needed, then the end-to-end demo on Fashion-MNIST.
#   scripts/demo.sh [--quick] [--seeds 0 1]
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup_venv.sh
bash scripts/get_fashion_mnist.sh >/dev/null
echo "[demo] set-up took $(( $(date +%s) - start )) s"
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python scripts/demo.py "$@"
