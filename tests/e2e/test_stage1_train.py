"""Stage 1 end to end: a frozen teacher exported from a tiny stage-2 run → MIM → student trunk → stage 2 --init
from it. The run is made in process through the engine's `Trainer`, so the tests see what the CLI hides: the
optimizer, the task's in-memory teacher and the student. The teacher never changes and never enters the
optimizer or the checkpoint; the student learns."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.train.engine import Trainer
from stage1_mim.config import Stage1Config
from stage1_mim.loss import masked_cosine_loss
from stage1_mim.task import MimTask
from stage1_mim.teacher import FrozenTeacher
from stage2_contrastive.train import main as stage2_main
from tests.support.tiny import STAGE1_CONFIG, STAGE2_CONFIG, TINY_STAGE2, stage1_overrides

STAGE1, STAGE2 = STAGE1_CONFIG, STAGE2_CONFIG
pytestmark = pytest.mark.slow

STAGE1_STEPS = 3


def clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@torch.no_grad()
def probe_loss(student: nn.Module, teacher: FrozenTeacher, images: torch.Tensor, mask: torch.Tensor) -> float:
    """The masked cosine loss of `student` (eval mode) on one fixed batch (images [B,3,S,S], mask [B,N])."""
    student.eval()
    return float(masked_cosine_loss(student(images, mask), teacher.patch_targets(images), mask))


@dataclass
class Stage1Run:
    """What a finished in-process stage-1 run leaves for the tests to check."""
    run_dir: Path
    task: MimTask  # its `teacher` is the in-memory teacher the run used
    teacher_before: dict[str, torch.Tensor]
    student: nn.Module
    optimizer_params: list[torch.Tensor]
    loss_before: float  # on one fixed batch, before / after training
    loss_after: float


@pytest.fixture(scope="module")
def stage1_run(fmnist_shards, teacher_export, tmp_path_factory) -> Stage1Run:
    """Stage 1 in process: 3 steps of batch 8 at 56 px (grad checkpointing on, as large runs train)."""
    out = tmp_path_factory.mktemp("stage1") / "run"
    overrides = stage1_overrides(fmnist_shards, out, teacher_export, f"train.steps={STAGE1_STEPS}",
                                 "student.grad_checkpointing=true")
    cfg = load_config(Stage1Config, STAGE1, overrides)
    trainer = Trainer.build(cfg, lambda run: MimTask(cfg, run))
    task = trainer.task
    teacher_before = clone_state(task.teacher)  # built, not yet trained
    try:
        student = trainer.accelerator.unwrap_model(trainer.model)
        torch.manual_seed(0)
        batch = next(iter(task.train_batches(seed=12345)))
        images, mask = batch["image"], batch["mask"].bool()
        loss_before = probe_loss(student, task.teacher, images, mask)
        trainer.fit()
        loss_after = probe_loss(student, task.teacher, images, mask)
        optimizer_params = [p for group in trainer.run.optimizer.param_groups for p in group["params"]]
    finally:
        trainer.close()
    return Stage1Run(out, task, teacher_before, student, optimizer_params, loss_before, loss_after)


def test_in_memory_teacher_is_unchanged_by_training(stage1_run, teacher_export):
    exported = load_file(str(teacher_export / "open_clip_model.safetensors"))
    after = stage1_run.task.teacher.state_dict()
    assert set(after) == set(stage1_run.teacher_before) == {f"clip.{k}" for k in exported}
    for key, value in stage1_run.teacher_before.items():
        assert torch.equal(after[key], value), key
        assert torch.equal(value, exported[key[len("clip."):]]), key


def test_teacher_is_frozen_and_the_optimizer_holds_exactly_the_students_trainable_parameters(stage1_run):
    teacher = stage1_run.task.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    optimized = {id(p) for p in stage1_run.optimizer_params}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert optimized == {id(p) for p in stage1_run.student.parameters() if p.requires_grad}
    assert len(optimized) == len(stage1_run.optimizer_params)  # no parameter twice


def test_run_logs_every_step_and_saves_the_student_only(stage1_run):
    records = read_metrics(stage1_run.run_dir)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, STAGE1_STEPS + 1))
    assert any("probe_top1" in r.get("eval", {}) for r in records)
    trunk = load_file(str(stage1_run.run_dir / "student_trunk.safetensors"))
    assert set(trunk) == set(stage1_run.student.trunk.state_dict())  # timm names: no head, mask token, teacher
    checkpoint, = (stage1_run.run_dir / "checkpoints").iterdir()
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert {key.split(".")[0] for key in saved} == {"trunk", "head", "mask_token"}
    assert {key for key in saved if key.startswith("trunk.")} == {f"trunk.{key}" for key in trunk}


def test_training_lowers_the_masked_cosine_loss_on_a_fixed_batch(stage1_run):
    # an untrained head predicts near-random directions (1 - cos ≈ 1); 3 steps learn the targets' shared part
    assert 0.5 < stage1_run.loss_before < 1.5
    assert stage1_run.loss_after < 0.8 * stage1_run.loss_before, (stage1_run.loss_before, stage1_run.loss_after)


def test_stage2_init_loads_the_stage1_trunk_tensor_for_tensor(fmnist_shards, stage1_run, tmp_path):
    """`--init` through the CLI; with lr 0 the stage-2 run's saved vision trunk is its initialisation."""
    out = tmp_path / "s2"
    args = ["--config", STAGE2, "--init", str(stage1_run.run_dir), "train.steps=1", "optim.lr=0",
            "data.image_size=56", f"train.output_dir={out}", f"data.train_shards={fmnist_shards / 'train'}",
            f"data.eval_shards={fmnist_shards / 'test'}", "data.final_eval_max_samples=32",
            *[a for a in TINY_STAGE2 if "image_size" not in a]]
    assert stage2_main(args) == 0
    stage1 = load_file(str(stage1_run.run_dir / "student_trunk.safetensors"))
    prefix = "visual.trunk."
    stage2 = {k[len(prefix):]: v for k, v in load_file(str(out / "model.safetensors")).items() if k.startswith(prefix)}
    assert set(stage2) == set(stage1)
    for key, value in stage1.items():
        assert torch.equal(stage2[key], value), key
