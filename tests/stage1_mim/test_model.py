"""stage1_mim/model.py, the stage-1 student: shapes, mask-token insertion, faithfulness to timm's forward,
state-dict names."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm
import torch
from safetensors.torch import load_file

from common.artifacts import TRUNK_FILE
from common.vision.trunk import create_eva_trunk
from common.weights.formats import TrunkInfo, read_trunk_info
from stage1_mim.config import Stage1Config, StudentConfig
from stage1_mim.model import MaskedEvaStudent
from stage1_mim.task import MimTask
from tests.support.models import block_runs_in_forward_backward

MODEL, IMG, TARGET_DIM = "eva02_tiny_patch14_224", 56, 24  # 4x4 grid of 14-px patches


@pytest.fixture(scope="module")
def student() -> MaskedEvaStudent:
    torch.manual_seed(0)
    return MaskedEvaStudent(create_eva_trunk(MODEL, IMG), TARGET_DIM).eval()


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, IMG, IMG, generator=g)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 1, 4, 5, 10]] = True
    mask[1, [3, 7, 11, 15]] = True
    return images, mask


def test_output_is_one_prediction_per_patch(student):
    images, mask = _inputs()
    assert student(images, mask).shape == (2, 16, TARGET_DIM)
    assert student(images, None).shape == (2, 16, TARGET_DIM)


def test_blocks_see_mask_token_plus_pos_embed_at_masked_positions(student):
    images, mask = _inputs()
    trunk = student.trunk
    seen = {}
    handle = trunk.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            student(images, mask)
    finally:
        handle.remove()
    assert not trunk.no_embed_class  # pos_embed covers [cls, patches]
    prefix = trunk.num_prefix_tokens
    patches = seen["x"][:, prefix:]
    with torch.no_grad():
        pos = trunk.pos_embed[:, prefix:].expand(2, -1, -1)
        masked_expected = trunk.norm_pre(student.mask_token + pos)
        visible_expected = trunk.norm_pre(trunk.patch_embed(images) + pos)
    torch.testing.assert_close(patches[mask], masked_expected[mask])
    torch.testing.assert_close(patches[~mask], visible_expected[~mask])


def test_unmasked_forward_equals_timm_forward_features_through_head(student):
    images, _ = _inputs()
    with torch.no_grad():
        features = student.trunk.forward_features(images)[:, student.trunk.num_prefix_tokens:]
        torch.testing.assert_close(student(images, None), student.head(features), rtol=0, atol=0)


def test_grad_checkpointing_recomputes_blocks_with_same_outputs_and_grads():
    torch.manual_seed(0)
    model = MaskedEvaStudent(create_eva_trunk(MODEL, 28), TARGET_DIM)  # 2x2 grid
    images, mask = torch.randn(2, 3, 28, 28), torch.tensor([[True, False, False, True], [False, True, False, False]])
    results = []
    for enable in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(enable)
        out = model(images, mask)
        out.square().sum().backward()
        qkv_grad = model.trunk.blocks[0].attn.qkv.weight.grad.clone()
        results.append((out.detach(), model.mask_token.grad.clone(), qkv_grad))
        assert block_runs_in_forward_backward(model, images, mask) == (2 if enable else 1)
    for plain, checkpointed in zip(*results):
        torch.testing.assert_close(plain, checkpointed)


def test_saved_trunk_has_timm_keys_only(student, tmp_path):
    reference = timm.create_model(MODEL, pretrained=False, img_size=IMG, num_classes=0)
    cfg = Stage1Config(student=StudentConfig(vision_model=MODEL))
    MimTask.save_weights(SimpleNamespace(cfg=cfg), student.state_dict(), tmp_path)  # the task's own writer
    saved = load_file(str(tmp_path / TRUNK_FILE))
    assert sorted(saved) == sorted(reference.state_dict())
    assert read_trunk_info(tmp_path / TRUNK_FILE) == TrunkInfo(MODEL, cfg.data.image_size)


def test_gradient_reaches_mask_token_and_every_trainable_parameter():
    torch.manual_seed(0)
    model = MaskedEvaStudent(create_eva_trunk(MODEL, 28), TARGET_DIM).train()
    images, mask = torch.randn(2, 3, 28, 28), torch.tensor([[True, False, False, True], [False, True, False, False]])
    model(images, mask).square().mean().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # DDP needs no find_unused_parameters


def test_wrong_mask_shape_is_a_clear_error(student):
    images, _ = _inputs()
    with pytest.raises(ValueError, match=r"expected \[B, N\] = \[2, 16\]"):
        student(images, torch.zeros(2, 9, dtype=torch.bool))


def test_patch_dropout_trunk_is_rejected():
    trunk = timm.create_model(MODEL, pretrained=False, img_size=28, num_classes=0, patch_drop_rate=0.5)
    with pytest.raises(ValueError, match="patch_drop_rate=0"):
        MaskedEvaStudent(trunk, TARGET_DIM)


def test_dynamic_img_size_trunk_masks_nhwc_patch_grid():
    trunk = timm.create_model(MODEL, pretrained=False, img_size=28, num_classes=0, dynamic_img_size=True)
    model = MaskedEvaStudent(trunk, TARGET_DIM).eval()
    images, mask = torch.randn(2, 3, 42, 28), torch.zeros(2, 6, dtype=torch.bool)  # 3x2 grid
    mask[:, 0] = True
    with torch.no_grad():
        assert model(images, mask).shape == (2, 6, TARGET_DIM)
        torch.testing.assert_close(model(images, None), model.head(trunk.forward_features(images)[:, 1:]))
