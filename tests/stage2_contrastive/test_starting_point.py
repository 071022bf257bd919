"""`--init`: a stage-1 trunk loads strictly into the stage-2 vision tower; a wrong shape, a missing tensor or
a tensor the trunk lacks is a one-line error; only the allow-listed classifier head (`head.*`) may be extra.
(A whole-CLIP start: test_starting_points.py.)
(The CLI path, stage 1 → `--init` → saved stage-2 trunk, is in test_stage1_train.py.)"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

from common.errors import ConfigError
from common.vision.trunk import create_eva_trunk
from common.errors import WeightsMismatchError as TrunkMismatchError
from stage1_mim.model import MaskedEvaStudent
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip
from stage2_contrastive.objective import Objective
from stage2_contrastive.starting_point import init_model, resolve_init

State = dict[str, torch.Tensor]
TINY_TEXT = TextConfig(context_length=8, width=32, heads=2, layers=1)


def init_vision_from_stage1(model, path) -> dict[str, list[str]]:
    """What `--init PATH` does for a stage-1 run or trunk file."""
    return init_model(model, resolve_init(path))


def clip(image_size: int = 28, name: str = "eva02_tiny_patch14_224"):
    cfg = ModelConfig(vision_model=name, embed_dim=16, text=TINY_TEXT)
    return build_clip(cfg, Objective.from_config("softmax", cfg, 8), image_size)


def stage1_trunk_file(tmp_path, image_size: int = 28, edit: Callable[[State], State] = lambda state: state):
    """A stage-1 student trunk saved as `student_trunk.safetensors`, after `edit(state) -> state`."""
    torch.manual_seed(1)
    student = MaskedEvaStudent(create_eva_trunk("eva02_tiny_patch14_224", image_size), target_dim=16)
    state = edit(dict(student.trunk.state_dict()))
    file = tmp_path / "student_trunk.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(file))
    return file, state


def test_init_round_trip_equals_stage1_trunk(tmp_path):
    file, state = stage1_trunk_file(tmp_path)
    model = clip()
    report = init_vision_from_stage1(model, tmp_path)  # the run folder form
    loaded = model.visual.trunk.state_dict()
    assert set(loaded) == set(state) and not report["new"]
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


def test_init_resamples_pos_embed_for_another_image_size(tmp_path):
    file, state = stage1_trunk_file(tmp_path, image_size=28)
    model = clip(image_size=56)
    init_vision_from_stage1(model, file)
    assert model.visual.trunk.pos_embed.shape == (1, 17, 192)
    assert torch.equal(model.visual.trunk.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_wrong_architecture_names_both_shapes(tmp_path):
    file, _ = stage1_trunk_file(tmp_path)
    with pytest.raises(TrunkMismatchError) as info:
        init_vision_from_stage1(clip(name="eva02_small_patch14_224"), file)
    message = str(info.value)
    assert "(192,)" in message or "192" in message
    assert "384" in message and "model.vision_model" in message and "\n" not in message


def test_missing_init_path_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="pass a stage-1 run"):
        init_vision_from_stage1(clip(), tmp_path / "nope")


def test_missing_trunk_tensor_is_a_one_line_error(tmp_path):
    dropped = "blocks.0.attn.qkv.weight"
    file, _ = stage1_trunk_file(tmp_path, edit=lambda state: {k: v for k, v in state.items() if k != dropped})
    with pytest.raises(TrunkMismatchError) as info:
        init_vision_from_stage1(clip(), file)
    message = str(info.value)
    assert "lacks 1 tensors of the vision trunk (first: 'blocks.0.attn.qkv.weight')" in message and "\n" not in message


def test_tensor_the_trunk_lacks_is_a_one_line_error(tmp_path):
    # e.g. the whole stage-1 student saved instead of its trunk: the mask token is no trunk tensor
    file, _ = stage1_trunk_file(tmp_path, edit=lambda state: {**state, "mask_token": torch.zeros(1, 1, 192)})
    with pytest.raises(TrunkMismatchError) as info:
        init_vision_from_stage1(clip(), file)
    message = str(info.value)
    assert "has 'mask_token', which the vision trunk lacks" in message and "\n" not in message


def test_allow_listed_classifier_head_is_skipped_and_the_rest_loads(tmp_path):
    head = {"head.weight": torch.ones(10, 192), "head.bias": torch.ones(10)}
    file, state = stage1_trunk_file(tmp_path, edit=lambda state: {**state, **head})
    model = clip()
    report = init_vision_from_stage1(model, file)
    assert sorted(report["skipped"]) == sorted(head) and not report["new"]
    loaded = model.visual.trunk.state_dict()
    assert set(loaded) == set(state) - set(head)
    for key in loaded:
        assert torch.equal(loaded[key], state[key]), key
