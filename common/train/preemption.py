"""Preemption: SIGTERM (Kubernetes, SLURM's preemption, torchrun forwarding its own) or SIGUSR1 (SLURM's
`--signal=USR1@SECONDS` before the time limit) asks the run to stop. Every rank finishes the step it is
in; at the step's end the ranks vote (a signal reaches them at different times), and once any rank saw
one they all write a complete checkpoint at that step, log why, and exit with `REQUEUE_EXIT_STATUS`, which
a launcher requeues on; `--resume auto` then continues exactly (the data stream moves on to the step).
"""
from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from common.stop_signals import STOP_SIGNALS, shield_loader_workers
from common.train.collectives import max_over_ranks

log = logging.getLogger("evaclip")
PREEMPT_SIGNALS = STOP_SIGNALS  # SIGTERM, SIGUSR1 (loader workers ignore them meanwhile: common.stop_signals)
REQUEUE_EXIT_STATUS = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried


class Preempted(Exception):
    """The run stopped on a preemption signal after writing a checkpoint; the message is one line."""

    def __init__(self, step: int, signal_name: str, checkpoint: Path | None):
        where = (f"checkpoint {checkpoint} written" if checkpoint is not None
                 else "its checkpoint could not be written (see the warning above)")
        super().__init__(f"stopped at step {step} on {signal_name}: {where} — requeue the same command with "
                         f"--resume auto (exit status {REQUEUE_EXIT_STATUS})")


class PreemptionWatch:
    """Between `start()` and `stop()`, PREEMPT_SIGNALS only set a flag (the previous handlers come back
    at `stop()`); `agreed()` is the vote every rank takes at the end of each step."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.received = 0  # the signal number seen by this process, 0 if none
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if not self.received:
            log.warning("received %s: finishing this step, then checkpointing and stopping",
                        signal.Signals(signum).name)
        self.received = signum

    def start(self) -> "PreemptionWatch":
        if threading.current_thread() is threading.main_thread():  # Python handles signals there only
            for sig in PREEMPT_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            shield_loader_workers(True)
        return self

    def stop(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if self._previous:
            shield_loader_workers(False)
        self._previous.clear()

    def agreed(self, step: int) -> str | None:
        """The name of a signal any rank has received (None: train on). A collective: every rank calls it."""
        signum = max_over_ranks(self.received, f"step {step}: the preemption vote", self.timeout_s)
        return signal.Signals(signum).name if signum else None
