"""The frozen stage-1 teacher, value for value: its targets against a direct computation written here from
the tower's parts — student→teacher normalisation (de-normalise, re-normalise), bicubic resize to the
teacher's size, patch tokens after the final norm and the projection, bilinear resize to the student's
grid — for open_clip's native `VisionTransformer` (loaded from a `local-dir:` folder, as a user's own
CLIP would be) and for a timm tower (this project's CLIP); and that it stays frozen."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from stage1_mim.teacher import FrozenTeacher, build_teacher
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip
from stage2_contrastive.objective import Objective

Norm = tuple[Sequence[float], Sequence[float]]
TEACHER_SIZE, PATCH, EMBED_DIM = 28, 14, 16  # teacher: 2x2 patches of 14 px
STUDENT_SIZE, STUDENT_GRID = 56, (4, 4)
STUDENT_NORM: Norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
TEACHER_NORM: Norm = (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
NATIVE_VIT_CFG = {  # open_clip `CLIP` model_cfg: a 1-layer ViT at 28 px, projection 32 -> 16
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": TEACHER_SIZE, "patch_size": PATCH, "width": 32, "layers": 1, "head_width": 16,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_native_vit_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised native open_clip ViT CLIP saved as a `local-dir:` folder
    (`open_clip_config.json` with TEACHER_NORM as its preprocessing + `open_clip_model.safetensors`)."""
    torch.manual_seed(0)
    clip = open_clip.CLIP(**NATIVE_VIT_CFG)
    with torch.no_grad():  # non-trivial final norm, so a target that skipped it would differ
        clip.visual.ln_post.weight.uniform_(0.5, 1.5)
        clip.visual.ln_post.bias.normal_(0, 0.5)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    preprocess = {"size": TEACHER_SIZE, "mean": list(TEACHER_NORM[0]), "std": list(TEACHER_NORM[1])}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": NATIVE_VIT_CFG,
                                                               "preprocess_cfg": preprocess}))
    return state


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


def reference_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Teacher-normalised images [B,3,T,T] → projected patch tokens [B, (T/patch)², D], from the tower's parts."""
    if hasattr(visual, "trunk"):  # timm tower: features, the pooled path's norm per token, the projection head
        trunk = visual.trunk
        tokens = trunk.forward_features(images)[:, trunk.num_prefix_tokens:]
        return visual.head(trunk.fc_norm(tokens))
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, h*w, width]
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    x = visual.ln_post(visual.transformer(x))
    return x[:, 1:] @ visual.proj  # drop the class token; project into the joint space


def reference_targets(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Student-normalised images [B,3,S,S] → targets [B, 16, D] on the student's 4x4 grid."""
    (mean_s, std_s), (mean_t, std_t) = [(torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1))
                                        for m, s in (STUDENT_NORM, TEACHER_NORM)]
    pixels = images * std_s + mean_s
    x = F.interpolate((pixels - mean_t) / std_t, size=(TEACHER_SIZE, TEACHER_SIZE), mode="bicubic",
                      align_corners=False)
    tokens = reference_tokens(visual, x)
    side = TEACHER_SIZE // PATCH
    grid = tokens.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)  # [B, D, 2, 2]
    grid = F.interpolate(grid, size=STUDENT_GRID, mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


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
