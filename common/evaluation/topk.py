"""Top-k classification, shared by stage 2's zero-shot eval and stage 1's zero-shot probe."""
from __future__ import annotations

from typing import Sequence

import torch

from common.evaluation.dist import sum_across_ranks


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of rows of `logits` [N, C] whose label [N] is among the top-k, for each k: [len(ks)] float64."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top == labels[:, None]
    return torch.tensor([hit[:, :min(k, k_max)].any(dim=1).sum().item() for k in ks], dtype=torch.float64)


class TopKCounter:
    """Top-k hits and sample count summed over batches (`update`) and then over ranks (`result`)."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.counts = torch.zeros(len(self.ks) + 1, dtype=torch.float64)  # hits per k, then samples

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """logits [N, C], labels [N] (any device)."""
        self.counts[:-1] += topk_accuracy(logits, labels, self.ks)
        self.counts[-1] += labels.shape[0]

    def result(self, prefix: str, device: torch.device | str = "cpu", allow_empty: bool = False) -> dict[str, float]:
        """{f"{prefix}_top{k}": fraction, …, "n": samples} over every rank (a collective: call on all).
        `device`: where the reduction runs (the process group's device). No sample at all: ValueError, or
        {} with `allow_empty`."""
        counts = sum_across_ranks(self.counts.to(device)).cpu()
        if counts[-1] == 0:
            if allow_empty:
                return {}
            raise ValueError("the eval split is empty — check data.eval_shards")
        metrics = {f"{prefix}_top{k}": float(counts[i] / counts[-1]) for i, k in enumerate(self.ks)}
        return {**metrics, "n": int(counts[-1])}
