"""A rank that hangs inside a step (common/train/collectives.py): the other rank fails with one line naming the
step and `train.dist_timeout_s` within the timeout."""
from __future__ import annotations

import pytest

from tests.support.launch import spawn_ranks

pytestmark = pytest.mark.slow


def test_a_hung_rank_makes_the_other_fail_with_one_line_within_the_timeout(tmp_path):
    logs = tmp_path / "logs"
    ranks = spawn_ranks(2, logs, "tests.support.tasks.linear_task", str(tmp_path / "run"), "train.steps=6",
                        "train.dist_timeout_s=20", "stall_at_step=3", "stall_rank=1", "stall_s=300")
    try:
        assert ranks[0].wait(timeout=240) == 1
        assert ranks[1].poll() is None  # rank 0 gave up while rank 1 still slept inside step 3
    finally:
        ranks[1].kill()
        ranks[1].wait()
    last = (logs / "rank0.err").read_text().strip().splitlines()[-1]
    assert last.startswith("error: step 3: ") and "timed out after 20 s (train.dist_timeout_s)" in last, last
