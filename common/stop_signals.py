"""The signals that ask a training run to stop (SIGTERM: Kubernetes, SLURM's preemption, torchrun forwarding
its own; SIGUSR1: SLURM's `--signal=USR1@SECONDS`), and the shield that keeps them from killing the run's
data-loader workers while the training loop runs.

A signal sent to a whole process group or job step (SLURM, `kill -TERM -PGID`) reaches the loader workers
too; torch's worker handler would die on it and take the step's batches away before the checkpoint. The
training loop (`common.train.preemption.PreemptionWatch`) turns the shield on when it starts and off when
it ends; each loader worker (`common.data.streams`) installs `ignore_stop_signals_while_training` at
start-up. Workers are forked (Linux's default), so they share the flag.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)  # a training run checkpoints and stops on these
_TRAINING = multiprocessing.RawValue("b", 0)  # shared with loader workers forked later: 1 while training


def shield_loader_workers(on: bool) -> None:
    """While on, STOP_SIGNALS do not stop this process's loader workers (`ignore_stop_signals_while_training`)."""
    _TRAINING.value = int(on)


def loader_workers_shielded() -> bool:
    """Whether the shield is on (the training loop is running)."""
    return bool(_TRAINING.value)


def _stop_signal_in_worker(signum: int, frame: Any) -> None:
    if _TRAINING.value:
        return  # the training process finishes its step and checkpoints first; this worker ends with its loader
    signal.signal(signum, signal.SIG_DFL)  # training is over: stop as a signalled process does
    os.kill(os.getpid(), signum)


def ignore_stop_signals_while_training() -> None:
    """Called in a loader worker: while the training loop runs it ignores STOP_SIGNALS; after it, it stops on
    them again (so a loader shut down at exit can still be terminated)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop_signal_in_worker)
