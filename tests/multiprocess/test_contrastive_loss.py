"""ContrastiveLoss across ranks (stage2_contrastive/objective.py): 2 and 4 gloo processes, each holding its slice
of one seeded global batch, give — combined the way DDP combines them — the loss and gradients of one process
on the whole batch (tests/support/dist_loss.py). (World size 1 through the same worker:
tests/stage2_contrastive/test_objective.py.)"""
from __future__ import annotations

import pytest
import torch

from tests.support.dist_loss import KINDS, assert_ranks_equal_one_process, loss_and_grads, run_ranks


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict[str, dict[str, torch.Tensor]]]:
    return run_ranks(2, tmp_path_factory.mktemp("two_ranks"))


@pytest.mark.slow  # two gloo processes
@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_equal_one_process_on_the_concatenated_batch(kind, two_ranks):
    single = loss_and_grads(kind, 0, 1)  # a plain call, no process group
    assert set(two_ranks[0][kind]) == set(single)
    assert_ranks_equal_one_process([r[kind] for r in two_ranks], single)
    # the ranks really hold different halves: their shares differ
    assert not torch.allclose(two_ranks[0][kind]["loss"], two_ranks[1][kind]["loss"])


@pytest.mark.slow
def test_four_ranks_equal_one_process_through_the_bidirectional_exchange(tmp_path):
    """W=4 takes open_clip's SigLIP ring through one bidirectional exchange and one one-way step (W=2
    needs the one-way step only), and the softmax all-gather through 4 slices. Slow: 4 processes."""
    ranks = run_ranks(4, tmp_path)
    for kind in KINDS:
        assert_ranks_equal_one_process([r[kind] for r in ranks], loss_and_grads(kind, 0, 1))
