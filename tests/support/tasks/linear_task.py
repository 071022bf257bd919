"""A tiny regression task for engine tests: y = x·w* + noise, a deterministic stream per (seed, rank).

Run as a script it trains under whatever launcher started it, writes the world size it saw and exits
with the CLI's status (`common.train.cli.exit_status`, one line on stderr for a foreseen error):
`python -m tests.support.tasks.linear_task OUT_DIR [key=value ...] [--resume auto]`.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import save_file
from torch import nn

from common.config.schema import load_config
from common.config.sections import OptimConfig, TrainConfig
from common.run_context import RunContext
from common.train.optim import tower_param_groups

# the checkpoint tests' run: 6 steps, checkpoints at 2, 4, 6, all kept
CHECKPOINTED_RUN = ["train.steps=6", "train.save_every=2", "train.keep_last=3"]


@dataclass
class LinearConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        steps=30, batch_size=16, log_every=1, progress=False, tensorboard=False,
        telemetry=False))  # the FLOP count calls `training_loss` once more: it would shift the call counts
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.05, warmup_steps=2, weight_decay=0.0))
    crash_at_step: int = 0  # >0: raise inside the step (simulates a crash)
    nan_at_steps: tuple[int, ...] = ()  # steps whose loss is replaced by NaN
    nan_grad_at_steps: tuple[int, ...] = ()  # steps whose loss stays finite but whose gradients are NaN
    step_sleep: float = 0.0  # seconds per step (gives a test time to kill the run mid-training)
    stall_at_step: int = 0  # >0: rank `stall_rank` sleeps `stall_s` seconds inside this step (a hung rank)
    stall_rank: int = 1
    stall_s: float = 0.0
    signal_at_step: int = 0  # >0: the process sends itself SIGTERM inside this step (a preemption)


class Crash(RuntimeError):
    pass


class LinearTask:
    def __init__(self, cfg: LinearConfig, run: RunContext):
        self.cfg, self.run, self.step = cfg, run, 0
        self.w_true = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return tower_param_groups(model, self.cfg.optim.weight_decay)

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        gen = torch.Generator().manual_seed(seed * 7919 + self.run.rank)
        while True:
            x = torch.randn(self.cfg.train.batch_size, 4, generator=gen)
            yield {"x": x, "y": x @ self.w_true + 0.01 * torch.randn(x.shape[0], 1, generator=gen)}

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        self.step += 1
        if self.cfg.crash_at_step and self.step == self.cfg.crash_at_step:
            raise Crash(f"injected crash at step {self.step}")
        if self.cfg.step_sleep:
            time.sleep(self.cfg.step_sleep)
        if self.step == self.cfg.stall_at_step and self.run.rank == self.cfg.stall_rank:
            time.sleep(self.cfg.stall_s)
        if self.step == self.cfg.signal_at_step:
            os.kill(os.getpid(), signal.SIGTERM)
        loss = nn.functional.mse_loss(model(batch["x"]), batch["y"])
        if self.step in self.cfg.nan_at_steps:
            loss = loss * float("nan")
        if self.step in self.cfg.nan_grad_at_steps:  # sqrt(0) = 0, but its derivative is inf, times 0: NaN
            loss = loss + torch.sqrt(next(model.parameters()).sum() * 0.0)
        return loss, {"batch_sum": float(batch["x"].sum())}  # logged: tells which batch each step drew

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    def evaluate(self, model: nn.Module, final: bool = False) -> dict[str, float]:
        seen = {"world": self.run.world_size, "rank": self.run.rank,
                "dist": torch.distributed.is_initialized() and torch.distributed.get_world_size()}
        out = Path(self.cfg.train.output_dir, f"world_rank{self.run.rank}.json")
        out.write_text(json.dumps(seen))
        x = torch.randn(64, 4, generator=torch.Generator().manual_seed(123))
        return {"mse": float(nn.functional.mse_loss(model(x.to(self.run.device)).cpu(), x @ self.w_true))}

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        save_file({k: v.contiguous().float().cpu() for k, v in state_dict.items()},
                  str(Path(out_dir) / "model.safetensors"))


def run_linear(out: Path, *overrides: str, resume: str | None = None, config: type = LinearConfig,
               task: type = LinearTask) -> list[dict]:
    """Train the linear task (or `task` under `config`) in this process into `out`; returns its metrics records."""
    from common.artifacts import read_metrics
    from common.train.engine import train
    cfg = load_config(config, None, [f"train.output_dir={out}", *overrides])
    train(cfg, lambda run: task(cfg, run), resume=resume)
    return read_metrics(out)


def main(argv: list[str], config: type = LinearConfig, task: type = LinearTask) -> int:
    """The command line of the module docstring, for the linear task (or `task` under `config`)."""
    from common.train.cli import exit_status
    from common.train.engine import train
    resume = argv[argv.index("--resume") + 1] if "--resume" in argv else None
    overrides = [a for a in argv[1:] if a not in ("--resume", resume)]
    cfg = load_config(config, None, [f"train.output_dir={argv[0]}", *overrides])
    return exit_status(lambda: train(cfg, lambda run: task(cfg, run), resume=resume))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
