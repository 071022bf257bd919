"""Stage-1 loss: cosine distance between student predictions and teacher targets on masked tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`mean over masked tokens of (1 - cos(pred, target))`, a fp32 scalar in [0, 2].

    pred, target: [B, N, D] (any float dtype; cast to fp32); mask: [B, N] bool, True = masked.
    EVA minimises `-cos`; `1 - cos` has the same gradient and reads as a distance (0 = perfect).
    Unmasked tokens are replaced by constants before anything is computed (`torch.where`, no boolean
    indexing: no host sync, static shapes for torch.compile), so their predictions get exactly zero
    gradient — even if they are inf/nan. Averaged over this rank's masked tokens; an empty mask gives NaN
    (a non-finite loss, which the engine skips; `mask.ratio` is checked at config load to mask ≥ 1 patch).
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, N, D]")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask {tuple(mask.shape)} must be [B, N] = {list(pred.shape[:2])}")
    mask = mask.to(device=pred.device, dtype=torch.bool)
    keep = mask.unsqueeze(-1)  # [B, N, 1]
    pred, target = torch.where(keep, pred.float(), 0.0), torch.where(keep, target.float(), 0.0)
    cos = (F.normalize(pred, dim=-1) * F.normalize(target, dim=-1)).sum(dim=-1)  # [B, N]; 0 where unmasked
    weights = mask.float()
    return ((1.0 - cos) * weights).sum() / weights.sum()
