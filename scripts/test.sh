#!/usr/bin/env bash
# The test command (README): set up .venv if needed, then run the whole suite, slow tests included.
#   scripts/test.sh               install (if needed) + pytest
#   scripts/test.sh --setup-only  install only
#   scripts/test.sh -m "not slow" extra arguments go to pytest (the fast lane)
#   scripts/test.sh -n 0          in this process only (default: 2 pytest-xdist workers, each taking whole
#                                 files, the longest first: tests/conftest.py)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
if [ "${1:-}" = "--setup-only" ]; then exit 0; fi
bash scripts/get_fashion_mnist.sh >/dev/null || echo "[test] Fashion-MNIST unavailable: the tests that need it will fail"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
exec .venv/bin/python -m pytest -q -p no:cacheprovider --timeout=900 -n 2 --dist loadfile --no-loadscope-reorder "$@"
