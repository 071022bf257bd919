"""`train.contrastive_accum: K` on 2 gloo ranks under torchrun (tests/support/tasks/accum_step.py, fp64): K
micro-batches of B per rank scored as ONE contrastive batch give each rank the loss and gradients of one
micro-batch of K·B, both losses."""
from __future__ import annotations

import subprocess

import pytest
import torch

from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.tasks.accum_step import KINDS, assert_same_step


@pytest.fixture(scope="module")
def two_processes(fmnist_shards, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accum_2proc")
    proc = subprocess.run(torchrun(2, "tests.support.tasks.accum_step", str(out), str(fmnist_shards)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(kind, r): torch.load(out / f"{kind}_rank{r}_of2.pt") for kind in KINDS for r in range(2)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_accumulated_group_equals_one_batch_k_times_bigger(kind, two_processes):
    for rank in range(2):
        assert_same_step(two_processes[(kind, rank)]["accumulated"], two_processes[(kind, rank)]["big"])
    # the ranks hold different samples: each rank's loss is its own share of the 2-rank batch
    assert not torch.allclose(two_processes[(kind, 0)]["big"]["loss"], two_processes[(kind, 1)]["big"]["loss"])
