"""Stage 1 end to end: a frozen teacher exported from a tiny stage-2 run → MIM → student trunk →
stage 2 --init from it. The teacher never changes and never enters the optimizer or the checkpoint."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from common.export import export_open_clip
from common.metrics_log import read_metrics
from stage1_mim.teacher import build_teacher
from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main

STAGE1 = "configs/stage1/fmnist_tiny.yaml"
STAGE2 = "configs/stage2/fmnist_tiny.yaml"


@pytest.fixture(scope="module")
def teacher_export(fmnist_shards, tmp_path_factory):
    """A tiny stage-2 model trained 2 steps and exported to an open_clip folder."""
    from tests.conftest import TINY_STAGE2
    tmp = tmp_path_factory.mktemp("teacher")
    args = ["--config", STAGE2, "train.steps=2", f"train.output_dir={tmp / 'run'}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}", *TINY_STAGE2]
    assert stage2_main(args) == 0
    return export_open_clip(tmp / "run", tmp / "export")


def stage1_args(fmnist_shards, out, teacher_export, *extra):
    return ["--config", STAGE1, f"teacher.model=local-dir:{teacher_export}", f"train.output_dir={out}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            "data.image_size=56", "data.num_workers=0", "data.eval_max_samples=32", "train.batch_size=8",
            "train.log_every=1", "train.progress=false", "train.tensorboard=false", "optim.warmup_steps=1",
            "mask.min_block=2", *extra]


def test_teacher_is_frozen_and_unchanged_by_training(fmnist_shards, teacher_export, tmp_path):
    before = load_file(str(teacher_export / "open_clip_model.safetensors"))
    assert stage1_main(stage1_args(fmnist_shards, tmp_path / "s1", teacher_export, "train.steps=3")) == 0
    teacher = build_teacher(f"local-dir:{teacher_export}", "", (4, 4), ((0.5,) * 3, (0.5,) * 3))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    for key, value in teacher.clip.state_dict().items():
        assert torch.equal(value, before[key]), key
    records = read_metrics(tmp_path / "s1")
    assert len([r for r in records if "loss" in r]) == 3
    assert any("probe_top1" in r.get("eval", {}) for r in records)
    trunk = load_file(str(tmp_path / "s1" / "student_trunk.safetensors"))
    assert trunk and not any(k.startswith(("head.", "mask_token")) for k in trunk)
    assert not any("teacher" in k or k.startswith("clip.") for k in trunk)


def test_teacher_targets_are_resized_to_the_student_grid(teacher_export):
    # the teacher was trained at 28 px (2x2 grid); a 56 px student has a 4x4 grid
    teacher = build_teacher(f"local-dir:{teacher_export}", "", (4, 4), ((0.5,) * 3, (0.5,) * 3))
    targets = teacher.patch_targets(torch.randn(2, 3, 56, 56))
    assert targets.shape == (2, 16, teacher.embed_dim) and targets.dtype == torch.float32


def test_stage2_init_from_stage1_run(fmnist_shards, teacher_export, tmp_path):
    assert stage1_main(stage1_args(fmnist_shards, tmp_path / "s1", teacher_export, "train.steps=2")) == 0
    from tests.conftest import TINY_STAGE2
    args = ["--config", STAGE2, "--init", str(tmp_path / "s1"), "train.steps=1", "data.image_size=56",
            f"train.output_dir={tmp_path / 's2'}", f"data.train_shards={fmnist_shards / 'train'}",
            f"data.eval_shards={fmnist_shards / 'test'}", *[a for a in TINY_STAGE2 if "image_size" not in a]]
    assert stage2_main(args) == 0


def test_missing_teacher_is_a_one_line_error(fmnist_shards, tmp_path, capsys):
    assert stage1_main(["--config", STAGE1, f"train.output_dir={tmp_path}"]) == 2
    assert "teacher.model is not set" in capsys.readouterr().err


def test_teacher_weights_of_another_config_are_a_one_line_error(fmnist_shards, teacher_export, tmp_path, capsys):
    weights = teacher_export / "open_clip_model.safetensors"  # a tiny model's weights for a ViT-B-32 config
    args = stage1_args(fmnist_shards, tmp_path, teacher_export, "teacher.model=ViT-B-32", f"teacher.weights={weights}")
    assert stage1_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match the open_clip config 'ViT-B-32'" in err and len(err.splitlines()) == 1
