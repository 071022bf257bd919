"""The entry point both stages share: parse `--config/--init/--resume key=value…`, validate, train."""
from __future__ import annotations

import sys
from typing import Any, Callable, Sequence

from common.config import ConfigError, load_config, parse_cli
from common.logs import setup_logging


def run_stage(argv: Sequence[str] | None, description: str, schema: type,
              make_task: Callable[[Any, str | None], Any], accepts_init: bool) -> int:
    """Load the config (all validation before any model is built), build the task, train.
    Bad input exits with status 2 and one line on stderr that names the fix."""
    args = parse_cli(argv, description)
    setup_logging()
    try:
        if args.init and not accepts_init:
            raise ConfigError("--init is a stage-2 flag (initialise from a stage-1 run); drop it here")
        cfg = load_config(schema, args.config, args.overrides)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from common.accel import make_accelerator
    from common.engine import train
    accelerator = make_accelerator(cfg.train)  # first: tasks read rank / world size from its state
    try:
        task = make_task(cfg, args.init)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_dir = train(task, cfg, resume=args.resume, accelerator=accelerator)
    except ConfigError as err:  # raised before the first step (e.g. a --resume that does not fit)
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"finished: {run_dir}")
    return 0
