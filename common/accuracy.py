"""Top-k classification hits, shared by stage 2's zero-shot eval and stage 1's zero-shot probe."""
from __future__ import annotations

from typing import Sequence

import torch


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of rows of `logits` [N, C] whose label [N] is among the top-k, for each k: [len(ks)] float64."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top == labels[:, None]
    return torch.tensor([hit[:, :min(k, k_max)].any(dim=1).sum().item() for k in ks], dtype=torch.float64)
