"""Contrastive accumulation (`train.contrastive_accum: K`): K micro-batches scored as ONE contrastive batch,
with the activation memory of one micro-batch — open_clip's `--accum-freq` algorithm (gradient caching).

    1. no grad: forward each micro-batch i, cache its features (image_features, text_features [B, D]) and
       the RNG state it started from;
    2. pass j = 0 … K−1: restore micro-batch j's RNG state (patch dropout, dropout and drop-path draw the
       same numbers as in step 1, so the re-forwarded features equal the cached ones), forward it with
       grad, put its features in place of the cached j-th rows, score all K·B rows (× ranks), and yield
       the loss for the engine to back-propagate.

Each pass's loss has the value of the big batch's loss L; its gradient reaches the towers only through
micro-batch j's features, so the K tower gradients sum to ∂L/∂θ exactly. The logit scale (and bias) enters
every pass with its own value but 1/K of its gradient (s.detach() + (s − s.detach())/K), so the K passes
sum to ∂L/∂s once, not K times — and every parameter receives a gradient in every pass (DDP and DeepSpeed
see no parameter unused in a micro-step; ZeRO-3 with CPU offload otherwise carries a stale gradient).
Rows are concatenated in micro-batch order, so the group equals the batch of K·B consecutive samples of
this rank's stream, and across ranks the gathered batch equals one of K·B per rank.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils.checkpoint import get_device_states, set_device_states

ROW_OUTPUTS = ("image_features", "text_features")  # [B, D] per micro-batch, concatenated along rows
SCALAR_OUTPUTS = ("logit_scale", "logit_bias")  # shared by all rows; 1/K of their gradient per pass

Outputs = dict[str, Any]


@dataclass
class RngSnapshot:
    """The CPU RNG state and that of every accelerator device the inputs live on (what
    `torch.utils.checkpoint` saves to replay a forward)."""
    cpu: torch.Tensor
    devices: list[int]
    device_states: list[torch.Tensor]

    @classmethod
    def take(cls, *tensors: Any) -> "RngSnapshot":
        return cls(torch.get_rng_state(), *get_device_states(*tensors))

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        set_device_states(self.devices, self.device_states)


def gradient_share(value: torch.Tensor, share: float) -> torch.Tensor:
    """`value` itself (bit for bit), passing back `share` × its gradient."""
    return value.detach() + (value - value.detach()) * share


def merge_outputs(cached: list[Outputs], live: Outputs, j: int) -> Outputs:
    """The group's outputs: cached rows with micro-batch j's rows replaced by the live (grad) ones, and
    the live scalars with 1/K of their gradient."""
    merged: Outputs = {key: torch.cat([live[key] if i == j else c[key] for i, c in enumerate(cached)])
                       for key in ROW_OUTPUTS}
    for key in SCALAR_OUTPUTS:
        value = live.get(key)
        merged[key] = None if value is None else gradient_share(value, 1.0 / len(cached))
    return merged


def cached_contrastive_passes(forward: Callable[[dict[str, Any]], Outputs], batches: list[dict[str, Any]],
                              score: Callable[[Outputs], tuple[torch.Tensor, dict]]
                              ) -> Iterator[tuple[torch.Tensor, dict]]:
    """Yield the K (loss, extras) of a group (module docstring). `forward(batch)` is the model's output
    dict; `score(outputs)` the (loss, extras) of one contrastive batch's outputs."""
    snapshots, cached = [], []
    with torch.no_grad():
        for batch in batches:
            snapshots.append(RngSnapshot.take(*batch.values()))
            out = forward(batch)
            cached.append({key: out[key] for key in ROW_OUTPUTS})
    for j, batch in enumerate(batches):
        snapshots[j].restore()  # after the last pass the RNG is where step 1 left it
        yield score(merge_outputs(cached, forward(batch), j))
