"""stage1_mim/teacher.py, the frozen stage-1 teacher, value for value: its targets against a direct computation
from the tower's parts (tests/support/teachers.py) for open_clip's native `VisionTransformer` (loaded from a
`local-dir:` folder, as a user's own CLIP would be), for a timm tower (this project's CLIP) and for this
project's own stage-2 export; it stays frozen; weights of another config are a one-line error."""
from __future__ import annotations

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from stage1_mim.teacher import FrozenTeacher, build_teacher
from stage1_mim.train import main as stage1_main
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip
from stage2_contrastive.objective import Objective
from tests.support.teachers import (
    EMBED_DIM,
    STUDENT_GRID,
    STUDENT_NORM,
    STUDENT_SIZE,
    TEACHER_NORM,
    TEACHER_SIZE,
    reference_targets,
    save_native_vit_folder,
)
from tests.support.tiny import stage1_args


@pytest.fixture(scope="module")
def native_vit_teacher(tmp_path_factory) -> FrozenTeacher:
    """A native open_clip ViT teacher through the user-facing loader (`teacher.model=local-dir:…`)."""
    folder = tmp_path_factory.mktemp("native_vit")
    save_native_vit_folder(folder)
    return build_teacher(f"local-dir:{folder}", "", STUDENT_GRID, STUDENT_NORM)


@pytest.fixture(scope="module")
def timm_tower_teacher() -> FrozenTeacher:
    """This project's CLIP (timm Eva trunk, avg pool → per-token fc_norm, linear head) as a teacher."""
    torch.manual_seed(0)
    text = TextConfig(context_length=8, width=32, heads=2, layers=1)
    model_cfg = ModelConfig(embed_dim=EMBED_DIM, text=text)
    clip = build_clip(model_cfg, Objective.from_config("softmax", model_cfg, 8), TEACHER_SIZE)
    with torch.no_grad():  # a non-trivial fc_norm, so a target that skipped it would differ
        clip.visual.trunk.fc_norm.weight.uniform_(0.5, 1.5)
        clip.visual.trunk.fc_norm.bias.normal_(0, 0.5)
    return FrozenTeacher(clip, None, STUDENT_GRID, STUDENT_NORM, TEACHER_NORM)


@pytest.mark.parametrize("kind", ["native_vit", "timm_tower"])
def test_targets_equal_direct_computation(kind, request):
    teacher: FrozenTeacher = request.getfixturevalue(f"{kind}_teacher")
    images = torch.randn(2, 3, STUDENT_SIZE, STUDENT_SIZE, generator=torch.Generator().manual_seed(1))
    targets = teacher.patch_targets(images)
    assert targets.shape == (2, 16, EMBED_DIM) and targets.dtype == torch.float32
    with torch.no_grad():
        expected = reference_targets(teacher.clip.visual, images)
    torch.testing.assert_close(targets, expected, rtol=1e-5, atol=1e-5)


def test_native_vit_teacher_holds_the_folder_weights(tmp_path):
    saved = save_native_vit_folder(tmp_path / "vit")
    teacher = build_teacher(f"local-dir:{tmp_path / 'vit'}", "", STUDENT_GRID, STUDENT_NORM)
    assert isinstance(teacher.clip.visual, open_clip.transformer.VisionTransformer)
    loaded = teacher.clip.state_dict()
    assert set(loaded) == set(saved) == set(load_file(str(tmp_path / "vit" / "open_clip_model.safetensors")))
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_teacher_is_frozen_and_stays_in_eval_mode(native_vit_teacher):
    native_vit_teacher.train()
    assert not native_vit_teacher.training and not any(m.training for m in native_vit_teacher.modules())
    assert not any(p.requires_grad for p in native_vit_teacher.parameters())
    images = torch.randn(1, 3, STUDENT_SIZE, STUDENT_SIZE, requires_grad=True)
    assert not native_vit_teacher.patch_targets(images).requires_grad


def test_exported_teacher_targets_equal_direct_computation(teacher_export):
    # the teacher was trained at 28 px (2x2 grid, OpenAI normalisation); a 56 px student has a 4x4 grid
    teacher = build_teacher(f"local-dir:{teacher_export}", "", STUDENT_GRID, STUDENT_NORM)
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    targets = teacher.patch_targets(images)
    assert targets.shape == (2, 16, teacher.embed_dim) and targets.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(targets, reference_targets(teacher.clip.visual, images), rtol=1e-5, atol=1e-5)


def test_teacher_weights_of_another_config_are_a_one_line_error(fmnist_shards, teacher_export, tmp_path, capsys):
    weights = teacher_export / "open_clip_model.safetensors"  # a tiny model's weights for a ViT-B-32 config
    args = stage1_args(fmnist_shards, tmp_path, teacher_export, "teacher.model=ViT-B-32", f"teacher.weights={weights}")
    assert stage1_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "do not match the open_clip config 'ViT-B-32'" in err and len(err.splitlines()) == 1
