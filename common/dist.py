"""Small distributed helpers on top of accelerate (no-ops in a single process)."""
from __future__ import annotations

from typing import Any

import torch


def gather_rows(tensor: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """Concatenate `tensor` [n_r, ...] from every rank (n_r may differ) → [Σ n_r, ...], on every rank."""
    if accelerator.num_processes == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = accelerator.gather(count).tolist()
    padded = accelerator.pad_across_processes(tensor, dim=0)
    gathered = accelerator.gather(padded)
    width = padded.shape[0]
    return torch.cat([gathered[r * width: r * width + n] for r, n in enumerate(counts)])


def sum_across_ranks(values: torch.Tensor, accelerator: Any) -> torch.Tensor:
    """Element-wise sum over ranks (float64 counters stay exact)."""
    if accelerator.num_processes == 1:
        return values
    return accelerator.reduce(values, reduction="sum")
