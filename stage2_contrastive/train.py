"""Stage 2: `python -m stage2_contrastive.train --config CONFIG [--init STAGE1_RUN] [--resume DIR|auto]
[key=value ...]` — contrastive CLIP (softmax) / SigLIP (sigmoid) training through the shared engine."""
from __future__ import annotations

import sys
from typing import Sequence

from common.train.cli import run_stage
from common.train.engine import TaskFactory
from stage2_contrastive.config import Stage2Config


def _task(cfg: Stage2Config, init: str | None) -> TaskFactory:
    """`--init` is resolved here (a one-line error when it names nothing), before anything is built."""
    from stage2_contrastive.from_stage1 import resolve_stage1_trunk
    from stage2_contrastive.task import ContrastiveTask
    init_file = resolve_stage1_trunk(init) if init else None
    return lambda run: ContrastiveTask(cfg, run, init_file)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "evaclip stage 2: contrastive image-text training (loss: softmax | sigmoid)",
                     Stage2Config, _task, accepts_init=True)


if __name__ == "__main__":
    sys.exit(main())
