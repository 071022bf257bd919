#!/usr/bin/env bash
# Create .venv (if missing) and install evaclip with its test extras. Idempotent; quick when present.
# torch + torchvision are installed FIRST and pinned (a constraint file keeps pip from resolving a newer
# torch, which would download several GB); everything else installs against that pin.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
STAMP=.venv/.evaclip-installed
HASH=$(cat pyproject.toml scripts/setup_venv.sh | sha256sum | cut -c1-16)

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  echo "[setup] .venv up to date"
  exit 0
fi
CONSTRAINTS=.venv/torch-constraints.txt
printf '%s\n' "${TORCH_PINS[@]}" > "$CONSTRAINTS"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "${TORCH_PINS[@]}"
.venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[dev]"
echo "$HASH" > "$STAMP"
echo "[setup] installed: $(.venv/bin/python -c 'import torch, timm, open_clip, accelerate, deepspeed; print("torch", torch.__version__, "timm", timm.__version__, "open_clip", open_clip.__version__, "accelerate", accelerate.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null | tail -n 1)"
