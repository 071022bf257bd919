"""A tiny regression task whose batches are consecutive slices of ONE fixed sample stream (a seeded pool
of POOL samples, cycled), so K micro-batches of B samples hold exactly the samples of one batch of K·B.
No dropout, mean-squared error: a batch's loss is the mean of its samples' losses. For engine tests of
gradient accumulation, run in-process: `common.train.engine.train(cfg, lambda run: StreamTask(cfg, run))`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

from common.config.sections import OptimConfig, TrainConfig
from common.run_context import RunContext
from common.train.optim import tower_param_groups

POOL = 64


@dataclass
class StreamConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=4, batch_size=8, log_every=1, progress=False, tensorboard=False,
        telemetry=False))  # the FLOP count calls `training_loss` once more: it would shift the call counts
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05, warmup_steps=1, weight_decay=0.01))
    # 1-based `training_loss` calls (micro-batches) whose loss is NaN while its gradients stay finite (a NaN
    # constant is added): only the engine's guard keeps such a micro-batch out of the update
    nan_at_calls: tuple[int, ...] = ()
    huge_at_calls: tuple[int, ...] = ()  # calls whose loss is × 1e6: finite, but fp16's scaled gradients overflow


class StreamTask:
    def __init__(self, cfg: StreamConfig, run: RunContext):
        self.cfg, self.run, self.calls = cfg, run, 0
        self.hidden_dtypes: set[torch.dtype] = set()  # what the first layer computed in (autocast or not)

    def build_model(self) -> nn.Module:
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        model[0].register_forward_hook(lambda module, args, out: self.hidden_dtypes.add(out.dtype))
        return model

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return tower_param_groups(model, self.cfg.optim.weight_decay)

    def train_batches(self, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of `train.batch_size` rows [B, 4] → targets [B, 1], consecutive in the pool."""
        gen = torch.Generator().manual_seed(seed * 7919 + self.run.rank)
        x = torch.randn(POOL, 4, generator=gen)
        y = torch.sin(x @ torch.randn(4, 1, generator=gen))
        batch, start = self.cfg.train.batch_size, 0
        while True:
            rows = torch.arange(start, start + batch) % POOL
            yield {"x": x[rows], "y": y[rows]}
            start += batch

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        self.calls += 1
        loss = nn.functional.mse_loss(model(batch["x"]).float(), batch["y"])
        if self.calls in self.cfg.huge_at_calls:
            loss = loss * 1e6
        return (loss + float("nan") if self.calls in self.cfg.nan_at_calls else loss), {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def evaluate(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        return {}

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        save_file({k: v.contiguous().float().cpu() for k, v in state_dict.items()},
                  str(Path(out_dir) / "model.safetensors"))
