"""Cross-rank reductions for evaluation, on `torch.distributed` (no-ops without a process group)."""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """Processes in the default group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` [n_r, ...] from every rank (n_r may differ) → [Σ n_r, ...], on every rank."""
    if world_size() == 1:
        return tensor
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.zeros_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    width = int(max(c.item() for c in counts))
    padded = tensor.new_zeros((width, *tensor.shape[1:]))
    padded[:tensor.shape[0]] = tensor
    gathered = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([rows[:int(n.item())] for rows, n in zip(gathered, counts)])


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate the picklable `items` of every rank, in rank order (the order of `gather_rows`)."""
    if world_size() == 1:
        return list(items)
    gathered: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(gathered, list(items))
    return [item for rank_items in gathered for item in rank_items]


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (float64 counters stay exact); returns a new tensor."""
    values = values.clone()
    if world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values
