"""The loss-spike rule (`train.spike`): a step whose loss exceeds `factor` × the median loss of the `window`
applied steps before it. Judged on the losses the engine already reads (log steps, before a checkpoint),
agreed across ranks, so it adds no sync and every rank decides alike. The window is part of the
checkpointed state, so a resumed run judges exactly as an uninterrupted one.

Non-finite losses are the step guard's (`step_guard.py`); this rule sees finite ones only.
"""
from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from common.config.sections import SpikeConfig
from common.errors import RunFault


class LossSpikeError(RunFault):
    """The run spiked again after `train.max_rollbacks` rollbacks; the message is one line."""


@dataclass(frozen=True)
class Spike:
    step: int
    loss: float
    median: float  # of the window before it

    def describe(self, factor: float) -> str:
        return (f"loss spike at step {self.step}: {self.loss:.4g} > {factor:g} × the recent median "
                f"{self.median:.4g}")


class SpikeGuard:
    """The recent losses and the rule; `judge` returns the first spike among newly read steps."""

    def __init__(self, cfg: SpikeConfig, recent: Iterable[float] = ()):
        self.cfg = cfg
        self.recent: deque[float] = deque(recent, maxlen=cfg.window)

    def judge(self, steps_losses: Iterable[tuple[int, float]]) -> list[Spike]:
        """The spikes among newly read (step, loss) pairs, in order; every other loss joins the window."""
        if self.cfg.action == "none":
            return []
        spikes = []
        for step, loss in steps_losses:
            if len(self.recent) == self.cfg.window:
                median = statistics.median(self.recent)
                if median > 0 and loss > self.cfg.factor * median:
                    spikes.append(Spike(step, loss, median))
                    continue
            self.recent.append(loss)
        return spikes

    def state(self) -> list[float]:
        return list(self.recent)
