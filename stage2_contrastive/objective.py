"""The stage-2 objective, as one object: the loss kind (config key `loss`), the learnable temperature
and bias with their initial values, defaults and rules (`model.init_logit_scale`, `model.init_logit_bias`),
the one cap on the temperature, and the loss module of a rank. `Objective.from_config` is where every
default is applied; the model is built from `Objective.model_cfg()`.

The loss: CLIP softmax (InfoNCE) or SigLIP sigmoid, on one rank or many.

Math, for L2-normalised features X = image_features, Y = text_features `[B, D]`, multiplier t (the
model's `logit_scale`, already exponentiated) and bias b:

    softmax:  L = ½ · [CE(t·X·Yᵀ, diag) + CE(t·Y·Xᵀ, diag)],   t ≤ MAX_LOGIT_SCALE = 100
    sigmoid:  L = −(1/B) · Σ_i Σ_j log σ(z_ij · (t·x_i·y_j + b)),   z = +1 if i = j else −1

Across W ranks (each holding B/W rows) rank r returns its share L_r with mean_r L_r = L on the
concatenated batch, so DDP's gradient averaging yields the global gradient:

    softmax: features all-gathered *with grad*; rank r's loss covers its own rows against all columns
             (open_clip `ClipLoss(local_loss=True, gather_with_grad=True)`).
    sigmoid: rank r's images meet every rank's texts, passed around the ring by autograd-aware
             neighbour exchange (bidirectional as in the SigLIP paper); the pair sum is divided by the
             local batch (open_clip `SigLipLoss(dist_impl="bidir")`). No full similarity matrix.

Both are open_clip 3.3's own modules, wrapped; this file adds the kind switch, the cap and input checks.
Every rank must hold the same local batch size (the all-gather and the exchange need equal shapes).

The cap t ≤ 100 (CLIP's): the learned log-parameter is clamped in place to [0, ln 100] after every
optimizer step (`Objective.clamp_`, as open_clip's trainer does), and the softmax loss caps t in its
forward too, so the bound holds where an in-place clamp cannot reach the parameter (a ZeRO-3 shard).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Optional, Protocol, get_args

import torch
from open_clip.loss import ClipLoss, SigLipLoss
from torch import nn

from common.errors import ConfigError

LossKind = Literal["softmax", "sigmoid"]  # the config type of `loss`
KINDS: tuple[str, ...] = get_args(LossKind)
MAX_LOGIT_SCALE = 100.0  # CLIP's cap on the multiplier t (ln 100 on the learned log-parameter)


class ContrastiveLoss(nn.Module):
    """`loss: softmax | sigmoid` from the stage-2 config, for rank `rank` of `world_size`.

    forward(image_features [B, D], text_features [B, D], logit_scale [] (exponentiated),
            logit_bias [] | None) → scalar loss (this rank's share; see the module docstring).
    """

    def __init__(self, kind: str, rank: int = 0, world_size: int = 1):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown loss kind '{kind}' — use 'softmax' or 'sigmoid' (config key: loss)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size} — need 0 <= rank < world_size")
        self.kind, self.rank, self.world_size = kind, rank, world_size
        if kind == "softmax":
            # labels (offset by rank * B for the local loss) are cached per device and batch size
            self.open_clip_loss: nn.Module = ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True,
                                                      rank=rank, world_size=world_size)
        else:
            # SigLipLoss builds its ±1 label matrix per call (its `cache_labels` is unused in 3.3): two
            # small device-side allocations, no host sync — not worth forking the class for.
            self.open_clip_loss = SigLipLoss(rank=rank, world_size=world_size, dist_impl="bidir")

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.kind == "softmax":
            if logit_bias is not None:
                raise ValueError("logit_bias is only used by the sigmoid loss — set loss=sigmoid, or build "
                                 "the model without init_logit_bias")
            return self.open_clip_loss(image_features, text_features, logit_scale.clamp(max=MAX_LOGIT_SCALE))
        if logit_bias is None:
            raise ValueError("the sigmoid loss needs logit_bias — build the model with init_logit_bias "
                             "(the stage-2 model does so when loss=sigmoid)")
        return self.open_clip_loss(image_features, text_features, logit_scale, logit_bias)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, rank={self.rank}, world_size={self.world_size}"


class LogitInit(Protocol):
    """The config keys the objective reads (`model.init_logit_scale`, `model.init_logit_bias`)."""
    init_logit_scale: Optional[float]
    init_logit_bias: Optional[float]


@dataclass(frozen=True)
class Objective:
    """The loss kind with the initial log multiplier and (sigmoid only) bias the model starts from."""
    kind: LossKind
    init_logit_scale: float
    init_logit_bias: Optional[float]

    @staticmethod
    def check(kind: str, init_logit_bias: Optional[float]) -> None:
        """The static rule (config load time): a bias belongs to the sigmoid loss only."""
        if kind == "softmax" and init_logit_bias is not None:
            raise ConfigError("model.init_logit_bias is only used by loss: sigmoid — remove it or set loss=sigmoid")

    @classmethod
    def from_config(cls, kind: LossKind, model: LogitInit, contrastive_batch: int) -> "Objective":
        """Defaults: t = 1/0.07 (CLIP) or 10 (SigLIP); b = −ln(B−1) for the B = `contrastive_batch` pairs
        one loss scores across ranks (micro-batch × `train.contrastive_accum` × ranks, `RunContext`): at
        init every pair scores σ(b) = 1/B, the prior rate of positives in a B×B batch.
        (SigLIP's −10 is this prior for B ≈ 22 000; small batches need the matching, milder value.)"""
        init_logit_scale, init_logit_bias = model.init_logit_scale, model.init_logit_bias
        cls.check(kind, init_logit_bias)
        scale = init_logit_scale if init_logit_scale is not None else (
            math.log(1 / 0.07) if kind == "softmax" else math.log(10.0))
        bias = None
        if kind == "sigmoid":
            bias = init_logit_bias if init_logit_bias is not None else -math.log(max(contrastive_batch - 1, 1))
        return cls(kind, scale, bias)

    def model_cfg(self) -> dict[str, Any]:
        """The open_clip `model_cfg` entries of the objective (`init_logit_bias` only for sigmoid)."""
        cfg: dict[str, Any] = {"init_logit_scale": self.init_logit_scale}
        if self.init_logit_bias is not None:
            cfg["init_logit_bias"] = self.init_logit_bias
        return cfg

    def loss(self, rank: int, world_size: int) -> ContrastiveLoss:
        """The loss module of rank `rank` of `world_size`."""
        return ContrastiveLoss(self.kind, rank, world_size)

    @staticmethod
    def clamp_(model: nn.Module) -> None:
        """Keep the model's learned log multiplier in [0, ln MAX_LOGIT_SCALE], in place."""
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
