#!/usr/bin/env bash
# Make sure the Fashion-MNIST idx files are on this machine (apt package, else the official download);
# prints the folder that holds them.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -c "from common.fashion_mnist import locate_fashion_mnist; print(locate_fashion_mnist())"
