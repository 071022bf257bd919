"""The non-finite guard, kept on the device: no host-device sync in a training step.

A step's fate is decided on the device and read back only when the engine logs or saves:

1. `poison_non_finite(loss)`: a non-finite loss multiplies itself by NaN (a finite one by 1), so its
   backward fills the gradients with NaN. Every later stage then sees a non-finite gradient: DDP's
   all-reduce carries it to every rank (all ranks skip the same step, no extra collective), fp16's
   GradScaler skips the step and halves its scale, DeepSpeed discards the update.
2. `gated_step(optimizer, skip)`: the optimizer step that does nothing when the 0-d device flag `skip`
   is set. torch's fused AdamW takes the flag as `found_inf` (its kernel returns early and its step
   count is restored: the GradScaler protocol); an optimizer without that protocol (timm's LAMB) reads
   the flag on the host, one sync per step.
3. `StepOutcomes`: the per-step outcomes (mean loss, status) since the last read, resolved in one
   transfer at `train.log_every` and before a checkpoint: skipped steps are counted, a warning names
   each, and `train.max_bad_steps` consecutive ones raise `NonFiniteError`, at the latest at the next
   log step after the limit was reached.

A skipped step is the WHOLE accumulation group: every micro-batch still runs forward and backward (so
accelerate's step counter, DDP's collectives and the data stream stay in step), the poisoned
gradients make the update a no-op, and `zero_grad` clears the group.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.artifacts import complete_checkpoints
from common.errors import RunFault

log = logging.getLogger("evaclip")

OK, NON_FINITE_LOSS, NON_FINITE_GRADIENT = 0, 1, 2  # a step's status
_WHAT = {NON_FINITE_LOSS: "loss", NON_FINITE_GRADIENT: "gradient norm"}


class NonFiniteError(RunFault):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


def poison_non_finite(loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss × 1 if finite else loss × NaN, its finiteness as a 0-d bool device tensor)."""
    finite = torch.isfinite(loss.detach()).all()
    factor = torch.where(finite, 1.0, math.nan).to(loss.dtype)
    return loss * factor, finite


def step_status(losses_finite: torch.Tensor, grad_norm: torch.Tensor | None) -> torch.Tensor:
    """0-d int device tensor: OK, NON_FINITE_LOSS (a micro-batch's loss on this rank) or NON_FINITE_GRADIENT
    (the synchronised gradients, e.g. poisoned on another rank)."""
    grad_finite = torch.isfinite(grad_norm) if grad_norm is not None else torch.ones_like(losses_finite)
    status = torch.where(grad_finite, OK, NON_FINITE_GRADIENT)
    return torch.where(losses_finite, status, NON_FINITE_LOSS)


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer under accelerate's `AcceleratedOptimizer` wrapper(s)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def gated_step(optimizer: Any, skip: torch.Tensor) -> None:
    """`optimizer.step()` unless the 0-d device flag `skip` is set; no host sync for optimizers that
    implement the GradScaler protocol (`_step_supports_amp_scaling`: torch's fused Adam/AdamW)."""
    inner = _inner(optimizer)
    if getattr(inner, "_step_supports_amp_scaling", False):
        inner.found_inf = skip.float()
        try:
            optimizer.step()
        finally:
            del inner.found_inf
    elif not bool(skip):  # host read: this optimizer cannot skip on a device flag
        optimizer.step()


@dataclass
class StepOutcomes:
    """Outcomes of the steps since the last `settle()`, on the device, and the run's host-side counts."""
    max_bad_steps: int
    run_dir: Path
    bad_total: int = 0  # skipped steps so far (checkpointed)
    skipped_samples: int = 0  # undecodable samples the loader skipped so far (checkpointed)
    bad_run: int = 0  # consecutive skipped steps up to the last settled one
    good_losses: list[tuple[int, float]] = field(default_factory=list)  # settled (step, loss) of applied steps
    _steps: list[int] = field(default_factory=list)
    _losses: list[torch.Tensor] = field(default_factory=list)
    _status: list[torch.Tensor] = field(default_factory=list)
    _skipped: list[torch.Tensor] = field(default_factory=list)

    def push(self, step: int, loss: torch.Tensor, status: torch.Tensor) -> None:
        """Record optimizer step `step` (1-based): its mean loss and status (0-d device tensors)."""
        self._steps.append(step)
        self._losses.append(loss.detach().float().reshape(()))
        self._status.append(status.reshape(()))

    def count_skipped(self, skipped: torch.Tensor | None) -> None:
        """The loader's per-sample skip counts of one batch (a CPU tensor), summed at `settle`."""
        if skipped is not None:
            self._skipped.append(skipped.sum())

    def settle(self) -> None:
        """Read the pending outcomes back (one transfer), count and name the skipped steps, and raise
        `NonFiniteError` once `max_bad_steps` consecutive steps were skipped."""
        if self._skipped:
            self.skipped_samples += int(torch.stack(self._skipped).sum())
            self._skipped = []
        if not self._steps:
            return
        values = torch.stack([torch.stack(self._losses), torch.stack(self._status).float()]).cpu().tolist()
        steps = self._steps
        self._steps, self._losses, self._status = [], [], []
        for step, loss, status in zip(steps, *values):
            if status == OK:
                self.bad_run = 0
                self.good_losses.append((step, loss))
                continue
            self.bad_total += 1
            self.bad_run += 1
            log.warning("step %d: non-finite %s, step skipped (%d in a row)", step, _WHAT[int(status)],
                        self.bad_run)
            if self.bad_run >= self.max_bad_steps:
                last = complete_checkpoints(self.run_dir)
                where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was saved yet"
                raise NonFiniteError(f"{self.bad_run} consecutive non-finite steps at step {step} — "
                                     f"{where}; lower optim.lr or raise train.grad_clip, then --resume")

    def take_losses(self) -> list[tuple[int, float]]:
        """The settled (step, loss) of the applied steps since the last call."""
        losses, self.good_losses = self.good_losses, []
        return losses
