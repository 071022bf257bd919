"""The facts of one process of a run, built once by the engine from its accelerator and handed to the
task: rank, world size, device, batch geometry, precision. Tasks read these, never accelerate's globals.

Batch sizes have one name each, and are computed here only:

    micro_batch        samples per rank per forward pass (`train.batch_size`)
    contrastive_batch  pairs one contrastive loss scores across ranks: micro_batch × contrastive_accum × world
    samples_per_step   samples per optimizer step: contrastive_batch × grad_accum

The engine writes `batch_figures()` into every start record of `metrics.jsonl`; the model card, run
summaries and start-up checks read them from there or from here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunContext:
    rank: int
    world_size: int
    device: torch.device
    micro_batch: int   # samples per rank per forward (train.batch_size)
    grad_accum: int    # contrastive batches whose gradients are summed per optimizer step (train.grad_accum)
    precision: str     # train.precision
    deepspeed: bool    # DeepSpeed wraps the model: its trained parameter set is fixed when it is wrapped
    contrastive_accum: int = 1  # micro-batches scored as one contrastive batch (train.contrastive_accum)
    compile: str = "none"  # train.compile: the engine compiles the model; a task compiles what else it runs
    compile_backend: str = "inductor"  # train.compile_backend

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def contrastive_batch(self) -> int:
        """Pairs one contrastive loss scores across ranks: micro-batch × contrastive_accum × world size."""
        return self.micro_batch * self.contrastive_accum * self.world_size

    @property
    def backward_passes(self) -> int:
        """Backward passes per optimizer step: contrastive_accum × grad_accum (accelerate's and DeepSpeed's
        gradient-accumulation steps)."""
        return self.contrastive_accum * self.grad_accum

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step across ranks: contrastive batch × grad_accum."""
        return self.contrastive_batch * self.grad_accum

    def batch_figures(self) -> dict[str, int]:
        """Every batch figure of the run, by its one name (what the run folder records)."""
        return {"micro_batch": self.micro_batch, "contrastive_accum": self.contrastive_accum,
                "world_size": self.world_size, "contrastive_batch": self.contrastive_batch,
                "grad_accum": self.grad_accum, "samples_per_step": self.samples_per_step}
