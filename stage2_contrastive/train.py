"""Stage 2 entry point: `python -m stage2_contrastive.train --config CONFIG [--init STAGE1] [--resume DIR]
[key=value ...]` — contrastive CLIP/SigLIP training through the shared engine."""
from __future__ import annotations

import sys
from typing import Sequence

from common.config import ConfigError, load_config, parse_cli
from common.engine import train
from common.logs import setup_logging
from stage2_contrastive.config import Stage2Config


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_cli(argv, "evaclip stage 2: contrastive image-text training (softmax or sigmoid loss)")
    setup_logging()
    try:
        cfg = load_config(Stage2Config, args.config, args.overrides)
        from stage2_contrastive.task import ContrastiveTask
        task = ContrastiveTask(cfg, init=args.init)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_dir = train(task, cfg, resume=args.resume)
    print(f"stage 2 finished: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
