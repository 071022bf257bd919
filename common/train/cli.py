"""The entry point both stages share: `--config/--init/--resume` and `key=value` overrides in any order,
everything validated before a model is built, then the engine. Every error the CLI can foresee is one
line on stderr, with the exit status a launcher acts on (`exit_status`):

    0   finished
    2   bad input (`common.errors.BadInputError`): config, paths, weights or a checkpoint that is
        damaged, unsafe or of another run
    75  preempted (SIGTERM/SIGUSR1): a checkpoint was written — requeue with --resume auto
    1   a fault that stopped the run (`common.errors.RunFault`): a checkpoint write failed, a rank stopped
        answering, no readable shard, too many non-finite steps
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.errors import BadInputError, ConfigError, RunFault
from common.train.logs import setup_logging
from common.train.preemption import REQUEUE_EXIT_STATUS, Preempted
from common.train.task import TaskFactory

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


def exit_status(run: Callable[[], Path]) -> int:
    """Run `run` (it trains and returns the run folder); print one line on stderr for every foreseen
    error and return the exit status of the table above."""
    try:
        run_dir = run()
    except (BadInputError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Preempted as err:
        print(f"preempted: {err}", file=sys.stderr)
        return REQUEUE_EXIT_STATUS
    except RunFault as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
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


def run_stage(argv: Sequence[str] | None, description: str, schema: type, make_task: StageTask,
              accepts_init: bool) -> int:
    """Load the config (all static validation before any model is built), resolve `--init`, train.
    Returns the exit status (`exit_status`)."""
    from common.train.engine import train
    args = parse_cli(argv, description)
    setup_logging()

    def run() -> Path:
        if args.init and not accepts_init:
            raise ConfigError("--init is a stage-2 flag (initialise from a stage-1 run); drop it here")
        cfg = load_config(schema, args.config, args.overrides)
        return train(cfg, make_task(cfg, args.init), resume=args.resume)

    return exit_status(run)
