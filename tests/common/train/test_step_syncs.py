"""No host-device sync in a training step between log steps: the non-finite guard, clipping, the metrics
and the logit-scale clamp stay on the device and are read at `train.log_every`.

On CPU: every Python-level read of a tensor's value (`.item()`, `.cpu()`, `.tolist()`, `bool()`, `int()`,
`float()`) is counted per loop iteration of the real engine on the tiny stage-2 model and the tiny stage-1
student + frozen teacher (batches pre-built on the device, so the loader's own CPU work is not counted); it
must be 0 except at log steps. On CUDA: the same steps under `torch.cuda.set_sync_debug_mode("error")`,
which raises on any synchronising call."""
from __future__ import annotations

import os
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from common.train.engine import Trainer
from tests.support.tasks.stage2_step import global_batch, stage2_config

pytestmark = pytest.mark.slow  # two tiny engines built and run 7 steps each
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


@pytest.fixture
def shards(request) -> Path:
    """train/ + test/ shards with classnames.txt: $EVACLIP_TEST_SHARDS (scripts/gpu_check.sh points it at
    the set it builds, from Fashion-MNIST or synthetic images) or the session's Fashion-MNIST set."""
    return Path(os.environ["EVACLIP_TEST_SHARDS"]) if "EVACLIP_TEST_SHARDS" in os.environ else \
        request.getfixturevalue("fmnist_shards")


def prebuilt_trainer(cfg: Any, make_task: Any, make_batch: Any, device: str, out: Path) -> Trainer:
    """The engine on the real task `make_task(cfg, run)`, fed `make_batch(task)` on `device` for ever."""
    cfg.train.output_dir, cfg.train.log_every, cfg.train.steps = str(out), LOG_EVERY, STEPS
    cfg.data.eval_shards = ""  # no evaluation: the steps alone

    def make(run: Any) -> Any:
        task = make_task(cfg, run)
        batch = {k: v.to(device) for k, v in make_batch(task).items()}
        task.train_batches = lambda seed: cycle([batch])
        return task
    return Trainer.build(cfg, make)


def stage2_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-2 model: real task, model, contrastive loss, logit-scale clamp."""
    from stage2_contrastive.task import ContrastiveTask
    return prebuilt_trainer(stage2_config("softmax", str(shards), world_size=1), ContrastiveTask, global_batch,
                            device, out)


def stage2_accum_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-2 model with contrastive accumulation K = 2 (cached features, re-forwarded passes)."""
    from stage2_contrastive.task import ContrastiveTask
    cfg = stage2_config("sigmoid", str(shards), world_size=1)
    cfg.train.contrastive_accum = 2
    return prebuilt_trainer(cfg, ContrastiveTask, global_batch, device, out)


def stage1_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-1 student against a frozen native-ViT teacher: real task, masking, cosine loss."""
    from common.config.schema import load_config
    from stage1_mim.config import Stage1Config
    from stage1_mim.task import MimTask
    from tests.e2e.test_stage1_train import stage1_args
    from tests.stage1_mim.test_teacher import save_native_vit_folder
    save_native_vit_folder(out / "teacher")
    args = stage1_args(shards, out, out / "teacher")
    cfg = load_config(Stage1Config, args[1], args[2:])

    def batch(task: MimTask) -> dict[str, torch.Tensor]:
        masks = torch.stack([torch.from_numpy(task.masker(np.random.default_rng(i)).reshape(-1))
                             for i in range(task.cfg.train.batch_size)])
        size = task.cfg.data.image_size
        return {"image": torch.randn(len(masks), 3, size, size, generator=torch.Generator().manual_seed(0)),
                "mask": masks}
    return prebuilt_trainer(cfg, MimTask, batch, device, out)


TRAINERS = {"stage2": stage2_trainer, "stage2_contrastive_accum": stage2_accum_trainer, "stage1": stage1_trainer}


def reads_per_step(trainer: Trainer, counter: ReadCounter) -> list[int]:
    """Tensor reads in each loop iteration of `fit` (iteration i: from step i's start to step i+1's)."""
    marks: list[int] = []
    train_step = trainer.step

    def marked(batches: Any) -> Any:
        marks.append(counter.calls)
        return train_step(batches)
    trainer.step = marked
    trainer.fit()
    return [b - a for a, b in zip(marks, marks[1:])]


@pytest.mark.parametrize("stage", list(TRAINERS))
def test_no_tensor_reads_between_log_steps_on_cpu(shards, tmp_path, monkeypatch, stage):
    trainer = TRAINERS[stage](shards, "cpu", tmp_path)
    try:
        reads = reads_per_step(trainer, ReadCounter(monkeypatch))
    finally:
        trainer.close()
    logged = [step % LOG_EVERY == 0 for step in range(1, STEPS)]
    assert [n for n, log in zip(reads, logged) if not log] == [0] * logged.count(False), reads
    assert all(n > 0 for n, log in zip(reads, logged) if log), reads  # the counter sees the log step's reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode raises "
                    "on host-device syncs of CUDA tensors only (scripts/gpu_check.sh runs this test on a GPU)")
@pytest.mark.parametrize("stage", list(TRAINERS))
def test_no_cuda_sync_between_log_steps(shards, tmp_path, stage):
    trainer = TRAINERS[stage](shards, "cuda", tmp_path)
    batches = trainer.batches()
    try:
        trainer.step(batches)  # warm-up: lazy initialisation may sync once
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(LOG_EVERY - 1):
                trainer.step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        trainer.close()
