"""Stage 2: `python -m stage2_contrastive.train --config CONFIG [--init STAGE1_RUN] [--resume DIR|auto]
[key=value ...]` — contrastive CLIP (softmax) / SigLIP (sigmoid) training through the shared engine."""
from __future__ import annotations

import sys
from typing import Sequence

from common.cli import run_stage
from stage2_contrastive.config import Stage2Config


def _task(cfg: Stage2Config, init: str | None):
    from stage2_contrastive.task import ContrastiveTask
    return ContrastiveTask(cfg, init=init)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "evaclip stage 2: contrastive image-text training (loss: softmax | sigmoid)",
                     Stage2Config, _task, accepts_init=True)


if __name__ == "__main__":
    sys.exit(main())
