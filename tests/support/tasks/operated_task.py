"""The linear task with what an operator's tools must see: a loader slowed on purpose (`loader_sleep`
seconds per batch, in the training process) and one poisoned batch (its targets × `poison_scale`, a
finite loss far above the recent level) at batch `poison_batch` of the stream started at step
`poison_stream_step` — only that stream: a stream re-seeded past it draws no poison.
`python -m tests.support.tasks.operated_task OUT_DIR [key=value ...] [--resume auto]` runs it like the linear task."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from common.train.engine import data_seed
from tests.support.tasks.linear_task import LinearConfig, LinearTask, main, run_linear


@dataclass
class OperatedConfig(LinearConfig):
    loader_sleep: float = 0.0
    poison_stream_step: int = -1  # the step whose stream holds the poisoned batch (-1: none)
    poison_batch: int = 0  # 0-based batch index within that stream
    poison_scale: float = 1000.0


class OperatedTask(LinearTask):
    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        poisoned = self.cfg.poison_stream_step >= 0 and seed == data_seed(self.cfg.train.seed,
                                                                          self.cfg.poison_stream_step)
        for index, batch in enumerate(super().train_batches(seed)):
            if self.cfg.loader_sleep:
                time.sleep(self.cfg.loader_sleep)
            if poisoned and index == self.cfg.poison_batch:
                batch = {"x": batch["x"], "y": batch["y"] * self.cfg.poison_scale}
            yield batch


def run_operated(out: Path, *overrides: str, resume: str | None = None) -> list[dict]:
    """Train the operated task in this process into `out`; returns its metrics records."""
    return run_linear(out, *overrides, resume=resume, config=OperatedConfig, task=OperatedTask)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], OperatedConfig, OperatedTask))
