#!/usr/bin/env bash
# Create .venv (if missing) and install evaclip with its test extras. Idempotent; quick when present.
# torch + torchvision are installed FIRST and pinned (a constraint file keeps pip from resolving a newer
# torch, which would download several GB); everything else installs against that pin.
#
#   scripts/setup_venv.sh              the default profile: torch 2.14.1 (CPU and GPU; attention: sdpa)
#   scripts/setup_venv.sh --gpu        the GPU profile: the torch/torchvision pair that PyPI's xformers was
#                                      built for, plus that xformers, checked with `python -m xformers.info`
#                                      and evaclip's own kernel probe (on a CUDA machine)
#   scripts/setup_venv.sh --dry-run    print the commands instead of running them (with or without --gpu)
#
# Why a profile: an xformers wheel holds compiled kernels for ONE torch; next to another torch its
# extension does not load and every attention call fails (xformers 0.0.35, PyPI's newest, is built for
# torch 2.10; beside torch 2.11 or 2.14 it cannot run). `model.attention: auto` uses xformers where its
# kernels load and SDPA elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PROFILE=cpu
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --gpu) PROFILE=gpu ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "setup_venv.sh: unknown argument '$arg' — use --gpu and/or --dry-run" >&2; exit 2 ;;
  esac
done
if [ "$PROFILE" = gpu ]; then
  TORCH_PINS=("torch==2.10.0" "torchvision==0.25.0")  # torchvision 0.25.0 requires torch==2.10.0
  EXTRA_PINS=("xformers==0.0.35")                      # built for torch 2.10 (requires torch>=2.10)
else
  TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")
  EXTRA_PINS=()
fi
STAMP=.venv/.evaclip-installed
HASH=$(cat pyproject.toml scripts/setup_venv.sh <(echo "$PROFILE") | sha256sum | cut -c1-16)

run() {  # run a command, or print it under --dry-run
  if [ "$DRY_RUN" = 1 ]; then echo "+ $*"; else "$@"; fi
}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  run "$PY" -m venv .venv
fi
if [ "$DRY_RUN" = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ]; then
  echo "[setup] .venv up to date ($PROFILE profile)"
  exit 0
fi
CONSTRAINTS=.venv/torch-constraints.txt
echo "[setup] $PROFILE profile: ${TORCH_PINS[*]} ${EXTRA_PINS[*]}"
if [ "$DRY_RUN" = 0 ]; then printf '%s\n' "${TORCH_PINS[@]}" > "$CONSTRAINTS"; fi
run .venv/bin/python -m pip install -q --upgrade pip
run .venv/bin/python -m pip install -q "${TORCH_PINS[@]}"
run .venv/bin/python -m pip install -q -c "$CONSTRAINTS" -e ".[dev]" "${EXTRA_PINS[@]}"
if [ "$PROFILE" = gpu ]; then
  run .venv/bin/python -m xformers.info
  # evaclip's own probe: a tiny memory_efficient_attention call on the GPU (what `attention: auto` runs)
  run .venv/bin/python -c 'import sys, torch
from common.vision.attention import xformers_unavailable_reason
if not torch.cuda.is_available():
    sys.exit(print("[setup] no CUDA device here: xformers kernels are checked on a GPU machine (rerun there)"))
reason = xformers_unavailable_reason()
print("[setup] xformers:", reason or "kernels load on", torch.cuda.get_device_name())
sys.exit(1 if reason else 0)'
fi
if [ "$DRY_RUN" = 1 ]; then exit 0; fi
echo "$HASH" > "$STAMP"
echo "[setup] installed: $(.venv/bin/python -c 'import torch, timm, open_clip, accelerate, deepspeed; print("torch", torch.__version__, "timm", timm.__version__, "open_clip", open_clip.__version__, "accelerate", accelerate.__version__, "deepspeed", deepspeed.__version__)' 2>/dev/null | tail -n 1)"
