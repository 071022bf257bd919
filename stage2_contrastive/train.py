"""Stage 2: `python -m stage2_contrastive.train --config CONFIG [--init RUN_OR_WEIGHTS] [--resume DIR|auto]
[key=value ...]` — contrastive CLIP (softmax) / SigLIP (sigmoid) training through the shared engine.
`--init`: a stage-1 run (the vision trunk) or a whole CLIP to continue from (starting_point.py)."""
from __future__ import annotations

import sys
from typing import Sequence

from common.train.cli import run_stage
from common.train.task import TaskFactory
from stage2_contrastive.config import Stage2Config


def _task(cfg: Stage2Config, init: str | None) -> TaskFactory:
    """`--init` is resolved here (a one-line error when it names nothing), before anything is built."""
    from stage2_contrastive.starting_point import resolve_init
    from stage2_contrastive.task import ContrastiveTask
    init_file = resolve_init(init) if init else None
    return lambda run: ContrastiveTask(cfg, run, init_file)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "evaclip stage 2: contrastive image-text training (loss: softmax | sigmoid)",
                     Stage2Config, _task, accepts_init=True)


if __name__ == "__main__":
    sys.exit(main())
