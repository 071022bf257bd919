"""`evaclip-torchrun`: torchrun with an exit status a scheduler can act on.

    evaclip-torchrun [torchrun options] -m stage2_contrastive.train --config CONFIG --resume auto [key=value ...]

torchrun's elastic agent reports any worker exit other than 0 as a failure: a preempted run, whose workers
checkpoint and exit 75, leaves torchrun with status 1, and a job script or a retry policy keyed on 75
never requeues it. This wrapper runs `python -m torch.distributed.run` with the same arguments, forwards
SIGTERM, SIGUSR1 and SIGINT to it, and exits with

    0    the run finished
    75   the run logged a `preempted` event during this launch (its checkpoint is written): requeue the
         same command (with --resume auto)
    N    otherwise torchrun's own status (1 after a worker failed)

The run folder is the training command's `train.output_dir` (its `--config` and overrides, read as the
stage reads them), or `--run-dir DIR` before the torchrun options for any other module.
"""
from __future__ import annotations

import importlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from common.artifacts import MetricsFile
from common.train.preemption import REQUEUE_EXIT_STATUS

FORWARDED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
STAGE_SCHEMAS = {"stage1_mim.train": "stage1_mim.config:Stage1Config",
                 "stage2_contrastive.train": "stage2_contrastive.config:Stage2Config"}


def preempted_events(run_dir: Path) -> int:
    """How many `preempted` events the run has logged."""
    return sum(1 for r in MetricsFile(run_dir).read() if r.get("event") == "preempted")


def run_dir_of(torchrun_args: Sequence[str]) -> Path:
    """`train.output_dir` of the training command in `torchrun_args` (`-m MODULE ARGS`, a stage's CLI)."""
    from common.config.schema import load_config
    from common.train.cli import parse_cli
    if "-m" not in torchrun_args:
        raise SystemExit("evaclip-torchrun: no '-m MODULE' in the torchrun command — name the stage to run, e.g. "
                         "-m stage2_contrastive.train --config CONFIG")
    module_at = list(torchrun_args).index("-m") + 1
    module, training_args = torchrun_args[module_at], torchrun_args[module_at + 1:]
    if module not in STAGE_SCHEMAS:
        raise SystemExit(f"evaclip-torchrun: '{module}' is not a stage ({', '.join(STAGE_SCHEMAS)}) — pass "
                         "--run-dir DIR (its output folder) before the torchrun options")
    schema_module, schema_name = STAGE_SCHEMAS[module].split(":")
    schema = getattr(importlib.import_module(schema_module), schema_name)
    args = parse_cli(training_args, "the training command")
    return Path(load_config(schema, args.config, args.overrides).train.output_dir)


def launch(torchrun_args: Sequence[str], run_dir: Path) -> int:
    """Run torchrun with `torchrun_args`, signals forwarded; returns the exit status of the module docstring."""
    before = preempted_events(run_dir)
    child = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args])
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in FORWARDED}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if status != 0 and preempted_events(run_dir) > before:
        print(f"evaclip-torchrun: the run was preempted and checkpointed (torchrun exited {status}): exit "
              f"{REQUEUE_EXIT_STATUS}, requeue with --resume auto", file=sys.stderr)
        return REQUEUE_EXIT_STATUS
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--run-dir"]:
        run_dir, args = Path(args[1]), args[2:]
    else:
        run_dir = run_dir_of(args)
    return launch(args, run_dir)


if __name__ == "__main__":
    sys.exit(main())
