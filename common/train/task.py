"""What a stage supplies to the engine: a `Task`, made by a `TaskFactory` from the run's `RunContext`.

The task builds the model (after the engine set the seed) and its param groups, makes this rank's data
stream, computes the loss of a batch, evaluates and writes the weights a user exports from; the engine
owns everything else (`common.train.engine`). A task's `training_loss` and `after_optimizer_step` read
no tensor values on the host (no `.item()`, no boolean indexing): the step stays free of host syncs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn

from common.run_context import RunContext


class Task(Protocol):
    """What a stage supplies to the engine (made by a `TaskFactory` from the run's `RunContext`)."""

    def build_model(self) -> nn.Module:
        """The model to train, randomly initialised from the seed the engine has just set."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]: ...

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        """An endless, deterministic stream of this rank's batches (a function of `seed` and the context).
        The engine takes two optional keys out of a batch: `skipped` ([B] bad samples skipped before each
        sample) and `source` (B names of the training sources the samples came from)."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """The scalar loss of a batch and extra scalars to log (plain floats or 0-d tensors). Called once
        more, on the first batch of a process, to count FLOPs (`train.telemetry`): it keeps no state."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called with the number of optimizer steps done (skipped ones included): after every step,
        and once before the first step of a run, fresh (0) or resumed (the checkpoint's step)."""

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, Any]:
        """Called on every rank with the unwrapped model, under no_grad and the run's autocast; returns the
        (already reduced) metrics, or {}: numbers, or a dict of numbers per named eval set. `final`: the
        end-of-run evaluation (`data.final_eval_max_samples`, default the whole split), else a periodic one
        (`data.eval_max_samples`)."""

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Main process only: write the consolidated weights a user exports from (`common.weights.formats`)."""


class ContrastiveGroupTask(Task, Protocol):
    """A task that also supports `train.contrastive_accum` K > 1 (stage 2); the engine refuses K > 1 for
    any other (`supports_contrastive_groups`)."""

    def contrastive_group(self, model: nn.Module, batches: list[dict[str, Any]]
                          ) -> Iterator[tuple[torch.Tensor, dict]]:
        """Score K micro-batches as ONE contrastive batch: yield K (loss, extras), one per backward pass.
        The engine back-propagates each before asking for the next; the K gradients sum to the gradient
        of the group's loss, and each yielded loss has that loss's value."""


TaskFactory = Callable[[RunContext], Task]


def supports_contrastive_groups(task: Task) -> bool:
    return hasattr(task, "contrastive_group")
