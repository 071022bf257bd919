"""The entry point both stages share: `--config/--init/--resume` and `key=value` overrides in any order,
everything validated before a model is built, then the engine. Every error the CLI can foresee (config,
paths, a checkpoint it cannot load) is one line on stderr and exit status 2."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, Sequence

from common.artifacts import read_metrics
from common.config.schema import ConfigError, load_config
from common.train.engine import TaskFactory
from common.train.logs import setup_logging

StageTask = Callable[[Any, "str | None"], TaskFactory]  # (config, --init or None) → the task factory


def parse_cli(argv: Sequence[str] | None, description: str) -> argparse.Namespace:
    """`--config`, `--init`, `--resume` and `key=value` overrides, intermixed in any order."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, help="YAML config (see configs/)")
    parser.add_argument("--init", default=None, help="weights to initialise from (stage 2: a stage-1 run)")
    parser.add_argument("--resume", default=None,
                        help="run folder or checkpoint to resume; 'auto' = newest in train.output_dir")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
    # the `deepspeed` launcher appends --local_rank=N (the rank also comes through the environment)
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_intermixed_args(argv)


def run_stage(argv: Sequence[str] | None, description: str, schema: type, make_task: StageTask,
              accepts_init: bool) -> int:
    """Load the config (all static validation before any model is built), resolve `--init`, train.
    Bad input exits with status 2 and one line on stderr that names the fix."""
    from common.train.engine import train
    args = parse_cli(argv, description)
    setup_logging()
    try:
        if args.init and not accepts_init:
            raise ConfigError("--init is a stage-2 flag (initialise from a stage-1 run); drop it here")
        cfg = load_config(schema, args.config, args.overrides)
        task_factory = make_task(cfg, args.init)
        run_dir = train(cfg, task_factory, resume=args.resume)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"finished: {run_dir}")
    print_final_eval(run_dir)
    return 0


def print_final_eval(run_dir: str) -> None:
    """The run's last eval record as one summary line (main process only; nothing without an eval)."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    from common.train.metrics import summary_line
    evals = [r for r in read_metrics(run_dir) if "eval" in r]
    if evals:
        print(f"final eval (step {evals[-1]['step']}): {summary_line(evals[-1]['eval'])}")
