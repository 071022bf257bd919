"""`train.wandb`: the run's scalars and config in Weights & Biases, beside metrics.jsonl and TensorBoard.

One wandb run per run folder: its id is kept in `RUN/wandb_run_id`, so a resumed run (same folder,
`--resume`) continues the same wandb run (`resume="allow"`). `mode: offline` writes under `RUN/wandb/`
without a network (`wandb sync RUN/wandb/offline-run-*` uploads it later). wandb keeps a run's history
monotonic: steps a crashed process had already sent past its last checkpoint are not rewritten.
wandb is an optional extra (`pip install 'evaclip[wandb]'`), imported here only.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from common.artifacts import WANDB_ID_FILE
from common.config.sections import WandbConfig


class WandbRun:
    """The wandb run of the run folder `run_dir` (main process only)."""

    def __init__(self, cfg: WandbConfig, run_dir: Path, config: dict[str, Any]):
        import wandb
        id_file = Path(run_dir) / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.parent.mkdir(parents=True, exist_ok=True)
        id_file.write_text(run_id)
        self.run = wandb.init(project=cfg.project, name=cfg.name or Path(run_dir).name, mode=cfg.mode,
                              dir=str(run_dir), id=run_id, resume="allow", config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self) -> None:
        self.run.finish()
