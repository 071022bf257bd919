"""stage2_contrastive/starting_point.py, `--init`:
- a stage-1 trunk loads strictly into the stage-2 vision tower; a wrong shape, a missing tensor or a tensor
  the trunk lacks is a one-line error; only the allow-listed classifier head (`head.*`) may be extra;
- a stage-2 run or an exported open_clip folder round-trips the whole model; continuing at another image
  size resamples the position embedding, a loss switch adds the bias; every key is reported once; a
  checkpoint of another shape is a one-line error.
(The CLI path, stage 1 → `--init` → saved stage-2 trunk: tests/e2e/test_stage1_train.py.)"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from common.errors import ConfigError, WeightsMismatchError
from common.export import export_open_clip
from common.vision.trunk import create_eva_trunk
from common.weights.formats import ClipConfig, ClipInfo, write_clip
from stage1_mim.model import MaskedEvaStudent
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip, build_tokenizer, open_clip_model_cfg
from stage2_contrastive.objective import Objective
from stage2_contrastive.starting_point import init_model, resolve_init
from tests.support.run_folders import CAPTIONS, TINY_24, stage2_model

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
    with pytest.raises(WeightsMismatchError) as info:
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
    with pytest.raises(WeightsMismatchError) as info:
        init_vision_from_stage1(clip(), file)
    message = str(info.value)
    assert "lacks 1 tensors of the vision trunk (first: 'blocks.0.attn.qkv.weight')" in message and "\n" not in message


def test_tensor_the_trunk_lacks_is_a_one_line_error(tmp_path):
    # e.g. the whole stage-1 student saved instead of its trunk: the mask token is no trunk tensor
    file, _ = stage1_trunk_file(tmp_path, edit=lambda state: {**state, "mask_token": torch.zeros(1, 1, 192)})
    with pytest.raises(WeightsMismatchError) as info:
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


# ---- a whole CLIP to continue from -----------------------------------------------------------------
def write_stage2_run(folder, model, cfg, loss: str = "softmax") -> None:
    """What a stage-2 run leaves at its top level: model.safetensors + open_clip_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    objective = Objective.from_config(loss, cfg.model, 8)
    info = ClipInfo(stage=2, loss=loss, vision_model=cfg.model.vision_model, image_size=cfg.data.image_size)
    write_clip(folder, model.state_dict(), ClipConfig(open_clip_model_cfg(cfg.model, objective, cfg.data.image_size),
                                                      {}, info))


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    """A trained-looking stage-2 run at 28 px with patch dropout (seeded weights, no training needed)."""
    torch.manual_seed(5)
    model, cfg = stage2_model([*TINY_24, "model.patch_dropout=0.5"])
    run = tmp_path_factory.mktemp("stage2_run")
    write_stage2_run(run, model, cfg)
    return run, model


def embeddings(model, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(build_tokenizer(cfg.model)(CAPTIONS))


def assert_every_key_listed_once(report: dict[str, list[str]], keys: set[str]) -> None:
    listed = [k for kind in ("loaded", "resampled", "skipped", "new") for k in report[kind]]
    assert sorted(listed) == sorted(keys)


@pytest.mark.parametrize("form", ["stage-2 run", "exported open_clip folder"])
def test_init_from_a_whole_model_round_trips(stage2_run, tmp_path, form):
    run, source = stage2_run
    path = run if form == "stage-2 run" else export_open_clip(run, tmp_path / "export")
    model, cfg = stage2_model(TINY_24)  # patch dropout off: FLIP's unmasked tuning
    report = init_model(model, resolve_init(path))
    assert_every_key_listed_once(report, set(source.state_dict()))
    assert len(report["loaded"]) == len(source.state_dict())
    for ours, theirs in zip(embeddings(model, cfg), embeddings(source.eval(), cfg)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_continuation_at_a_larger_size_resamples_pos_embeds_and_a_loss_switch_adds_the_bias(stage2_run):
    """EVA-CLIP's 224 → 336 px continuation in miniature (28 → 56 px), with a longer context and sigmoid."""
    run, source = stage2_run
    model, _ = stage2_model([*TINY_24, "data.image_size=56", "model.text.context_length=20"], loss="sigmoid")
    report = init_model(model, resolve_init(run))
    assert report["resampled"] == ["visual.trunk.pos_embed", "text.positional_embedding"]
    assert report["new"] == ["logit_bias"]
    assert_every_key_listed_once(report, set(source.state_dict()) | set(model.state_dict()))
    expected = resample_abs_pos_embed(source.visual.trunk.pos_embed.detach(), [4, 4], [2, 2], num_prefix_tokens=1)
    torch.testing.assert_close(model.visual.trunk.pos_embed.detach(), expected)
    own, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], theirs[k]) for k in report["loaded"])


def test_init_from_a_model_of_another_width_is_a_one_line_error(stage2_run):
    run, _ = stage2_run
    model, _ = stage2_model([*TINY_24, "model.embed_dim=16"])
    with pytest.raises(WeightsMismatchError, match=r"--init .*does not fit the model") as info:
        init_model(model, resolve_init(run))
    assert "\n" not in str(info.value)
