"""How many samples each training source gave (`data.train_shards` as a weighted list): this rank's draws
since the last merge, and the run's totals over every rank, merged at log and save steps and checkpointed."""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from common.evaluation.dist import gather_objects


class SourceDraws:
    """Draw counts per source name: `total` (all ranks, up to the last merge) and this rank's `pending`."""

    def __init__(self, total: dict[str, int] | None = None):
        self.total: Counter[str] = Counter(total or {})
        self.pending: Counter[str] = Counter()

    def count(self, sources: Iterable[str]) -> None:
        """The source names of one batch's samples (this rank)."""
        self.pending.update(sources)

    def merge(self) -> None:
        """Add every rank's pending draws to the totals (a collective; no rank has any without mixed sources,
        and every rank some after a step with them: all skip or none)."""
        if not self.pending:
            return
        for draws in gather_objects([dict(self.pending)]):
            self.total.update(draws)
        self.pending.clear()

    def totals(self) -> dict[str, int]:
        return dict(sorted(self.total.items()))
