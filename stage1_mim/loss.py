"""Stage-1 loss: cosine distance between student predictions and teacher targets on masked tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mean over masked tokens of (1 - cos(pred, target))`, a fp32 scalar in [0, 2].

    pred, target: [B, N, D] (any float dtype; cast to fp32); mask: [B, N] bool, True = masked.
    EVA minimises `-cos`; `1 - cos` has the same gradient and reads as a distance (0 = perfect).
    Only masked tokens are selected (boolean indexing), so unmasked predictions get exactly zero
    gradient — even if they are inf/nan. Averaged over this rank's masked tokens.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, N, D]")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be [B, N] = {list(pred.shape[:2])}")
    mask = mask.to(device=pred.device, dtype=torch.bool)
    if not bool(mask.any()):
        raise ValueError("masked_cosine_loss got an empty mask — every batch needs masked tokens "
                         "(check mask.ratio and the mask generator)")
    pred_masked, target_masked = pred[mask].float(), target[mask].float()  # [M, D]
    cos = (F.normalize(pred_masked, dim=-1) * F.normalize(target_masked, dim=-1)).sum(dim=-1)
    return (1.0 - cos).mean()
