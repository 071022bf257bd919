"""The stage-2 loss as training wires it (tests/support/tasks/stage2_step.py): 2 DDP processes under torchrun,
each stepping the real `ContrastiveTask` on its half of a fixed batch, give the loss and gradients of one
process on the whole batch — for both loss kinds. A loss built for rank 0 of 1 on every process (each
rank contrasting only its own half) would give each rank's local loss instead."""
from __future__ import annotations

import subprocess

import pytest
import torch

from common.config.sections import TrainConfig
from common.train.accelerator import make_accelerator
from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.tasks.stage2_step import KINDS, run_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_processes(fmnist_shards, tmp_path_factory) -> dict[str, list[dict]]:
    """{loss kind: [rank 0's result, rank 1's result]} of one torchrun launch."""
    out = tmp_path_factory.mktemp("stage2_step")
    proc = subprocess.run(torchrun(2, "tests.support.tasks.stage2_step", str(out), str(fmnist_shards)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {kind: [torch.load(out / f"{kind}_rank{r}_of2.pt") for r in range(2)] for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_two_process_stage2_step_equals_one_process_on_the_whole_batch(kind, two_processes, fmnist_shards):
    ranks = two_processes[kind]
    single = run_step(kind, str(fmnist_shards), make_accelerator(TrainConfig()))
    # each rank's loss is its share: their mean is the loss of the whole batch
    assert not torch.allclose(ranks[0]["loss"], ranks[1]["loss"])  # the ranks hold different halves
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, single["loss"], rtol=1e-5, atol=1e-6)
    # DDP's averaged gradients, the same on both ranks, are the whole batch's gradients
    assert set(ranks[0]["grads"]) == set(ranks[1]["grads"]) == set(single["grads"])
    for name, grad in single["grads"].items():
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name
        torch.testing.assert_close(ranks[0]["grads"][name], grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{kind} gradient of {name}: {m}")
