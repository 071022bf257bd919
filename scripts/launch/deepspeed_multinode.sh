#!/usr/bin/env bash
# Multi-node stage 2 with the `deepspeed` launcher (passwordless ssh from the first host to the others,
# the repo and .venv at the same path on every node). ZeRO stage comes from train.deepspeed.
#   scripts/launch/deepspeed_multinode.sh [extra key=value overrides]
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
deepspeed --hostfile scripts/launch/hostfile --master_port 29500 \
  --module stage2_contrastive.train \
  --config configs/stage2/fmnist_tiny.yaml \
  train.deepspeed=configs/deepspeed/zero2.json train.precision=bf16 "$@"
