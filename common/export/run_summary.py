"""What a finished run folder says about itself (either stage), for its one reader, the model card: the
resolved config, the train/data sections both stages share, the evaluations, and the batch figures and
world size its last process recorded in its start record (`RunContext.batch_figures`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from common.artifacts import CONFIG_FILE, EvalRecord, MetricsFile, read_resolved_config
from common.config.schema import build
from common.config.sections import DataConfig, TrainConfig


@dataclass
class RunSummary:
    """A run's own account of how it ran: its resolved config (None when the folder has no config.yaml),
    its train/data sections, evaluations, the batch figures of its last process (`micro_batch`,
    `contrastive_accum`, `world_size`, `contrastive_batch`, `grad_accum`, `samples_per_step`; None when
    not recorded) and the last step it logged."""
    folder: Path
    config: Optional[dict[str, Any]]
    train: Optional[TrainConfig]
    data: Optional[DataConfig]
    evals: list[EvalRecord]
    batch: Optional[dict[str, int]]
    last_step: Optional[int]

    @classmethod
    def read(cls, folder: str | Path) -> "RunSummary":
        folder = Path(folder)
        config = read_resolved_config(folder)
        where = str(folder / CONFIG_FILE)
        train = build(TrainConfig, config["train"], where, "train.") if config and "train" in config else None
        data = build(DataConfig, config["data"], where, "data.") if config and "data" in config else None
        metrics = MetricsFile(folder)
        starts = metrics.starts()
        steps = [r["step"] for r in metrics.read() if "step" in r]
        return cls(folder, config, train, data, metrics.evals(), starts[-1].get("batch") if starts else None,
                   max(steps) if steps else None)
