"""Run logging on the main process: `metrics.jsonl` (`common.artifacts.MetricsFile`), and each record's
numeric leaves as scalars in TensorBoard and, with `train.wandb`, Weights & Biases (`wandb_run.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from common.artifacts import TENSORBOARD_DIR, MetricsFile
from common.config.sections import WandbConfig


class MetricsLogger:
    """Appends records to the run's metrics file; numeric leaves also go to TensorBoard and wandb if enabled
    (`config`: the resolved config, wandb's run config)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True,
                 wandb: Optional[WandbConfig] = None, config: Optional[dict[str, Any]] = None):
        self.enabled = enabled
        self.file = MetricsFile(run_dir)
        self.writer = None
        self.wandb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a run must not die for its logs
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))
        if enabled and wandb is not None and wandb.mode != "disabled":
            from common.train.wandb_run import WandbRun
            self.wandb = WandbRun(wandb, Path(run_dir), config or {})

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.append(record)
        if "step" not in record:
            return
        scalars = numeric_leaves(record)
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, record["step"])
        if self.wandb is not None and scalars:
            self.wandb.log(scalars, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.finish()


def numeric_leaves(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers (not `step`, not booleans), nested names joined by `/`: what the scalar sinks get."""
    return {tag: value for tag, value in _flatten(record).items()
            if tag != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[prefix + key] = value
    return flat


def summary_line(metrics: dict[str, Any]) -> str:
    """Eval metrics as one line: `key=value` per leaf, named sets as `set/key` (fractions to 4 places)."""
    return " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in _flatten(metrics).items())
