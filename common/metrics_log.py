"""Run logging on the main process: `metrics.jsonl` (one JSON object per line) + TensorBoard scalars."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl`; numeric leaves also go to TensorBoard if enabled."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a dependency, but a run must not die for its logs
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
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


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of a run's `metrics.jsonl` (empty if none)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
