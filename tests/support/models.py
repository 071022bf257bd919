"""Probes of a model's training step for the tests."""
from __future__ import annotations

import torch

from stage1_mim.model import MaskedEvaStudent


def block_runs_in_forward_backward(student: MaskedEvaStudent, images: torch.Tensor, mask: torch.Tensor) -> int:
    """How often the first trunk block starts in one training forward + backward of `student` on images
    [B,3,H,W] / mask [B,N]: 1, or 2 when activation checkpointing recomputes it during backward (counted by a
    pre-hook: the recompute stops early and never returns). Leaves no gradients behind."""
    runs: list[int] = []
    handle = student.trunk.blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    try:
        student.train()
        student(images, mask).square().mean().backward()
    finally:
        handle.remove()
        student.zero_grad(set_to_none=True)
    return len(runs)
