"""Stage-2 contrastive loss: CLIP softmax (InfoNCE) or SigLIP sigmoid, on one rank or many.

Math, for L2-normalised features X = image_features, Y = text_features `[B, D]`, multiplier t (the
model's `logit_scale`, already exponentiated) and bias b:

    softmax:  L = ½ · [CE(t·X·Yᵀ, diag) + CE(t·Y·Xᵀ, diag)],   t clamped to ≤ 100
    sigmoid:  L = −(1/B) · Σ_i Σ_j log σ(z_ij · (t·x_i·y_j + b)),   z = +1 if i = j else −1

Across W ranks (each holding B/W rows) rank r returns its share L_r with mean_r L_r = L on the
concatenated batch, so DDP's gradient averaging yields the global gradient:

    softmax: features all-gathered *with grad*; rank r's loss covers its own rows against all columns
             (open_clip `ClipLoss(local_loss=True, gather_with_grad=True)`).
    sigmoid: rank r's images meet every rank's texts, passed around the ring by autograd-aware
             neighbour exchange (bidirectional as in the SigLIP paper); the pair sum is divided by the
             local batch (open_clip `SigLipLoss(dist_impl="bidir")`). No full similarity matrix.

Both are open_clip 3.3's own modules, wrapped; this file adds the kind switch, the clamp and input checks.
Every rank must hold the same local batch size (the all-gather and the exchange need equal shapes).
"""
from __future__ import annotations

from typing import Optional

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on the multiplier t (ln 100 on the learned log-parameter)
KINDS = ("softmax", "sigmoid")


class ContrastiveLoss(nn.Module):
    """`loss: softmax | sigmoid` from the stage-2 config, for rank `rank` of `world_size`.

    forward(image_features [B, D], text_features [B, D], logit_scale [] (exponentiated),
            logit_bias [] | None) → scalar loss (this rank's share; see the module docstring).
    """

    def __init__(self, kind: str, rank: int = 0, world_size: int = 1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown loss kind '{kind}' — use 'softmax' or 'sigmoid' (config key: loss)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size} — need 0 <= rank < world_size")
        self.kind, self.rank, self.world_size = kind, rank, world_size
        if kind == "softmax":
            # labels (offset by rank * B for the local loss) are cached per device and batch size
            self.open_clip_loss: nn.Module = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                                      rank=rank, world_size=world_size)
        else:
            # SigLipLoss builds its ±1 label matrix per call (its `cache_labels` is unused in 3.3): two
            # small device-side allocations, no host sync — not worth forking the class for.
            self.open_clip_loss = SigLipLoss(rank=rank, world_size=world_size, dist_impl="bidir")

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kind == "softmax":
            if logit_bias is not None:
                raise ValueError("logit_bias is only used by the sigmoid loss — set loss=sigmoid, or build "
                                 "the model without init_logit_bias")
            return self.open_clip_loss(image_features, text_features, logit_scale.clamp(max=MAX_LOGIT_SCALE))
        if logit_bias is None:
            raise ValueError("the sigmoid loss needs logit_bias — build the model with init_logit_bias "
                             "(the stage-2 model does so when loss=sigmoid)")
        return self.open_clip_loss(image_features, text_features, logit_scale, logit_bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, rank={self.rank}, world_size={self.world_size}"
