#!/usr/bin/env bash
# Multi-node training with the `deepspeed` launcher (passwordless ssh from the first host to the others,
# the repo and .venv at the same path on every node; hosts and GPU slots in scripts/launch/hostfile).
# The ZeRO stage comes from the config's train.deepspeed (the EVA recipes: configs/deepspeed/zero1.json).
#   scripts/launch/deepspeed_multinode.sh stage1 configs/stage1/eva02_b_mim.yaml teacher.weights=/w/EVA01-g-14.bin
#   scripts/launch/deepspeed_multinode.sh stage2 configs/stage2/eva02_clip_b16.yaml --init runs/eva02_b_mim \
#       model.text.weights=/w/ViT-B-16.pt train.contrastive_accum=4      # 2 nodes: 8 / 2 … see docs/scale.md
set -euo pipefail
stage=${1:?usage: deepspeed_multinode.sh stage1|stage2 CONFIG [--init …] [key=value …]}
config=${2:?usage: deepspeed_multinode.sh stage1|stage2 CONFIG [--init …] [key=value …]}
shift 2
case "$stage" in
  stage1) module=stage1_mim.train ;;
  stage2) module=stage2_contrastive.train ;;
  *) echo "error: the first argument is stage1 or stage2, not '$stage'" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/../.."
source .venv/bin/activate
deepspeed --hostfile scripts/launch/hostfile --master_port 29500 \
  --module "$module" --config "$config" --resume auto "$@"
