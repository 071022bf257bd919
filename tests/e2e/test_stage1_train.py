"""Stage 1 end to end: a frozen teacher exported from a tiny stage-2 run → MIM → student trunk →
stage 2 --init from it. The run is made in process through the engine's `Trainer`, so the tests see what
the CLI hides: the optimizer, the task's in-memory teacher and the student. The teacher never changes and
never enters the optimizer or the checkpoint; the student learns; `student.grad_checkpointing` is really on."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.export import export_open_clip
from common.train.engine import Trainer
from stage1_mim.config import Stage1Config
from stage1_mim.loss import masked_cosine_loss
from stage1_mim.task import MimTask
from stage1_mim.teacher import FrozenTeacher, build_teacher
from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main
from tests.conftest import TINY_STAGE2, single_process_run
from tests.stage1_mim.test_model import block_runs_in_forward_backward
from tests.stage1_mim.test_teacher import STUDENT_GRID, STUDENT_NORM, reference_targets, save_native_vit_folder

STAGE1 = "configs/stage1/fmnist_tiny.yaml"
STAGE2 = "configs/stage2/fmnist_tiny.yaml"
STAGE1_STEPS = 3


@pytest.fixture(scope="module")
def teacher_export(fmnist_shards, tmp_path_factory):
    """A tiny stage-2 model trained 2 steps and exported to an open_clip folder."""
    tmp = tmp_path_factory.mktemp("teacher")
    args = ["--config", STAGE2, "train.steps=2", f"train.output_dir={tmp / 'run'}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}", *TINY_STAGE2]
    assert stage2_main(args) == 0
    return export_open_clip(tmp / "run", tmp / "export")


def stage1_overrides(fmnist_shards, out, teacher_export, *extra) -> list[str]:
    return [f"teacher.model=local-dir:{teacher_export}", f"train.output_dir={out}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            "data.image_size=56", "data.num_workers=0", "data.eval_max_samples=32",
            "data.final_eval_max_samples=32", "train.batch_size=8", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "optim.warmup_steps=1", "mask.min_block=2", *extra]


def stage1_args(fmnist_shards, out, teacher_export, *extra) -> list[str]:
    return ["--config", STAGE1, *stage1_overrides(fmnist_shards, out, teacher_export, *extra)]


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
        optimizer_params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    finally:
        trainer.close()
    return Stage1Run(out, task, teacher_before, student, optimizer_params, loss_before, loss_after)


@pytest.mark.slow
def test_in_memory_teacher_is_unchanged_by_training(stage1_run, teacher_export):
    exported = load_file(str(teacher_export / "open_clip_model.safetensors"))
    after = stage1_run.task.teacher.state_dict()
    assert set(after) == set(stage1_run.teacher_before) == {f"clip.{k}" for k in exported}
    for key, value in stage1_run.teacher_before.items():
        assert torch.equal(after[key], value), key
        assert torch.equal(value, exported[key[len("clip."):]]), key


@pytest.mark.slow
def test_teacher_is_frozen_and_the_optimizer_holds_exactly_the_students_trainable_parameters(stage1_run):
    teacher = stage1_run.task.teacher
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    optimized = {id(p) for p in stage1_run.optimizer_params}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert optimized == {id(p) for p in stage1_run.student.parameters() if p.requires_grad}
    assert len(optimized) == len(stage1_run.optimizer_params)  # no parameter twice


@pytest.mark.slow
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


@pytest.mark.slow
def test_training_lowers_the_masked_cosine_loss_on_a_fixed_batch(stage1_run):
    # an untrained head predicts near-random directions (1 - cos ≈ 1); 3 steps learn the targets' shared part
    assert 0.5 < stage1_run.loss_before < 1.5
    assert stage1_run.loss_after < 0.8 * stage1_run.loss_before, (stage1_run.loss_before, stage1_run.loss_after)


def test_student_grad_checkpointing_from_the_config_is_in_effect(fmnist_shards, tmp_path):
    teacher = tmp_path / "teacher"  # a tiny native open_clip ViT: no stage-2 run needed to build the task
    save_native_vit_folder(teacher)
    overrides = stage1_overrides(fmnist_shards, tmp_path / "run", teacher)
    images, mask = torch.randn(2, 3, 56, 56), torch.arange(16).repeat(2, 1) % 3 == 0  # 4x4 grid
    runs = {}
    for enabled in (False, True):
        cfg = load_config(Stage1Config, STAGE1, [*overrides, f"student.grad_checkpointing={enabled}"])
        task = MimTask(cfg, single_process_run(cfg.train.batch_size))
        runs[enabled] = block_runs_in_forward_backward(task.build_model(), images, mask)
    assert runs == {False: 1, True: 2}  # checkpointed blocks are recomputed in backward


@pytest.mark.slow
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


def test_exported_teacher_targets_equal_direct_computation(teacher_export):
    # the teacher was trained at 28 px (2x2 grid, OpenAI normalisation); a 56 px student has a 4x4 grid
    teacher = build_teacher(f"local-dir:{teacher_export}", "", STUDENT_GRID, STUDENT_NORM)
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    targets = teacher.patch_targets(images)
    assert targets.shape == (2, 16, teacher.embed_dim) and targets.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(targets, reference_targets(teacher.clip.visual, images), rtol=1e-5, atol=1e-5)


def test_missing_teacher_is_a_one_line_error(fmnist_shards, tmp_path, capsys):
    assert stage1_main(["--config", STAGE1, f"train.output_dir={tmp_path}"]) == 2
    assert "teacher.model is not set" in capsys.readouterr().err


def test_teacher_weights_of_another_config_are_a_one_line_error(fmnist_shards, teacher_export, tmp_path, capsys):
    weights = teacher_export / "open_clip_model.safetensors"  # a tiny model's weights for a ViT-B-32 config
    args = stage1_args(fmnist_shards, tmp_path, teacher_export, "teacher.model=ViT-B-32", f"teacher.weights={weights}")
    assert stage1_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match the open_clip config 'ViT-B-32'" in err and len(err.splitlines()) == 1


@torch.no_grad()
def test_held_out_loss_is_the_masked_cosine_loss_on_fixed_masks_with_or_without_labels(
        fmnist_shards, caption_shards, teacher_export, tmp_path):
    """The eval's `loss`: 1 − cos over the masked tokens of every held-out image, image i masked by
    `default_rng([EVAL_MASK_SEED, i])` — computed image by image here; caption-only images get it (and no
    probe), for any eval batch size; labelled ones get the probe beside it."""
    from stage1_mim.task import EVAL_MASK_SEED
    overrides = stage1_overrides(fmnist_shards, tmp_path / "run", teacher_export,
                                 f"data.eval_shards={caption_shards / 'test'}", "data.eval_batch_size=32",
                                 "data.image_size=28", "data.final_eval_max_samples=16")
    task = MimTask(load_config(Stage1Config, STAGE1, overrides), single_process_run())
    torch.manual_seed(0)
    student = task.build_model().eval()
    metrics = task.evaluate(student, final=True)
    assert set(metrics) == {"loss", "n"} and metrics["n"] == 16

    def sample(image, meta):
        return {"image": task.eval_tf(image), "index": meta["index"]}
    total, tokens = 0.0, 0
    for batch in task.data.eval_batches(sample, final=True):
        for image, index in zip(batch["image"], batch["index"].tolist()):
            mask = torch.from_numpy(task.masker(np.random.default_rng([EVAL_MASK_SEED, index])).reshape(1, -1))
            pred, target = student(image[None], mask)[mask], task.teacher.patch_targets(image[None])[mask]
            total += float((1 - F.cosine_similarity(pred, target, dim=-1)).double().sum())
            tokens += int(mask.sum())
    assert metrics["loss"] == pytest.approx(total / tokens, abs=1e-6)
    task.data.cfg.eval_batch_size = 5
    assert task.evaluate(student, final=True)["loss"] == pytest.approx(metrics["loss"], abs=1e-6)
    labelled = MimTask(load_config(Stage1Config, STAGE1, [*overrides, f"data.eval_shards={fmnist_shards / 'test'}"]),
                       single_process_run())
    assert set(labelled.evaluate(student, final=True)) == {"loss", "n", "probe_top1", "probe_top5"}
