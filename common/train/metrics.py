"""Run logging on the main process: `metrics.jsonl` (`common.artifacts.MetricsFile`) + TensorBoard scalars."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.artifacts import TENSORBOARD_DIR, MetricsFile


class MetricsLogger:
    """Appends records to the run's metrics file; numeric leaves also go to TensorBoard if enabled."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.file = MetricsFile(run_dir)
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a run must not die for its logs
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.file.append(record)
        if self.writer is not None and "step" in record:
            for tag, value in _flatten(record).items():
                if tag != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(tag, value, record["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
