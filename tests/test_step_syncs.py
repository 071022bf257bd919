"""No host-device sync in a training step between log steps: the non-finite guard, clipping, the metrics
and the logit-scale clamp stay on the device and are read at `train.log_every`.

On CPU: every Python-level read of a tensor's value (`.item()`, `.cpu()`, `.tolist()`, `bool()`, `int()`,
`float()`) is counted per loop iteration of the real engine on the tiny stage-2 model (batches pre-built
on the device, so the loader's own CPU work is not counted); it must be 0 except at log steps. On CUDA:
the same steps under `torch.cuda.set_sync_debug_mode("error")`, which raises on any synchronising call."""
from __future__ import annotations

from itertools import cycle
from typing import Any

import pytest
import torch

from common.train.engine import Trainer
from tests.tasks.stage2_step import global_batch, stage2_config

READS = ("item", "cpu", "tolist", "__bool__", "__int__", "__float__")
LOG_EVERY, STEPS = 3, 7


class ReadCounter:
    """Counts calls of the tensor methods in READS while installed (pytest's monkeypatch undoes it)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))

    def _counted(self, method: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return method(tensor, *args, **kwargs)
        return counted


def stage2_trainer(fmnist_shards, tmp_path, device: str, *overrides: str) -> Trainer:
    """The engine on the tiny stage-2 model (real task, model, loss, clamp) fed pre-built device batches."""
    from stage2_contrastive.task import ContrastiveTask
    cfg = stage2_config("softmax", str(fmnist_shards), world_size=1)
    cfg.train.output_dir, cfg.train.log_every, cfg.train.steps = str(tmp_path), LOG_EVERY, STEPS
    cfg.data.eval_shards = ""  # no evaluation: the steps alone

    def make(run: Any) -> ContrastiveTask:
        task = ContrastiveTask(cfg, run)
        batch = {k: v.to(device) for k, v in global_batch(task).items()}
        task.train_batches = lambda seed: cycle([batch])
        return task
    return Trainer(cfg, make)


def reads_per_step(trainer: Trainer, counter: ReadCounter) -> list[int]:
    """Tensor reads in each loop iteration of `fit` (iteration i: from step i's start to step i+1's)."""
    marks: list[int] = []
    train_step = trainer._train_step

    def marked(batches: Any) -> Any:
        marks.append(counter.calls)
        return train_step(batches)
    trainer._train_step = marked
    trainer.fit()
    return [b - a for a, b in zip(marks, marks[1:])]


def test_no_tensor_reads_between_log_steps_on_cpu(fmnist_shards, tmp_path, monkeypatch):
    trainer = stage2_trainer(fmnist_shards, tmp_path, "cpu")
    try:
        reads = reads_per_step(trainer, ReadCounter(monkeypatch))
    finally:
        trainer.close()
    logged = [step % LOG_EVERY == 0 for step in range(1, STEPS)]
    assert [n for n, log in zip(reads, logged) if not log] == [0] * logged.count(False), reads
    assert all(n > 0 for n, log in zip(reads, logged) if log), reads  # the counter sees the log step's reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode raises "
                    "on host-device syncs of CUDA tensors only (scripts/gpu_check.sh runs this test on a GPU)")
def test_no_cuda_sync_between_log_steps(fmnist_shards, tmp_path):
    trainer = stage2_trainer(fmnist_shards, tmp_path, "cuda")
    batches = trainer._batches()
    try:
        trainer._train_step(batches)  # warm-up: lazy initialisation may sync once
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(LOG_EVERY - 1):
                loss, status, extras = trainer._train_step(batches)
                trainer.window.push(trainer.step + 1, loss, status)
                trainer.step += 1
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        trainer.close()
