"""Stage 1: `python -m stage1_mim.train --config CONFIG [--resume DIR|auto] teacher.model=local-dir:PATH
[key=value ...]` — masked image modeling against a frozen CLIP teacher through the shared engine."""
from __future__ import annotations

import sys
from typing import Sequence

from common.train.cli import run_stage
from common.train.task import TaskFactory
from stage1_mim.config import Stage1Config


def _task(cfg: Stage1Config, init: str | None) -> TaskFactory:
    from stage1_mim.task import MimTask
    return lambda run: MimTask(cfg, run)


def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(argv, "evaclip stage 1: masked image modeling against a frozen CLIP teacher",
                     Stage1Config, _task, accepts_init=False)


if __name__ == "__main__":
    sys.exit(main())
