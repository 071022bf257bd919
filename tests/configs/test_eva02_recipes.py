"""The EVA-CLIP / EVA-02 recipe configs (configs/stage2/eva02_clip_*.yaml, configs/stage1/eva02_*_mim.yaml)
build, at their real size on the meta device, the models open_clip and timm define under those names:
same parameter count as open_clip's EVA02-B-16 / EVA02-L-14 / EVA02-L-14-336, same trunk tensors as timm's
model (the stage-1 student), and each stage-1 trunk loads into the stage-2 tower it initialises."""
from __future__ import annotations

import open_clip
import pytest
import timm
import torch
from open_clip.model import CustomTextCLIP

from common.config.schema import load_config
from common.vision.trunk_io import fit_trunk_state
from stage1_mim.config import Stage1Config
from stage1_mim.task import student_trunk
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.model import build_clip
from stage2_contrastive.objective import Objective
from stage2_contrastive.starting_point import TRUNK_MAY_DIFFER
from tests.support.launch import ROOT

STAGE2 = {"eva02_clip_b16.yaml": "EVA02-B-16", "eva02_clip_l14.yaml": "EVA02-L-14",
          "eva02_clip_l14_336.yaml": "EVA02-L-14-336"}
STAGE1 = {"eva02_b_mim.yaml": ("eva02_clip_b16.yaml", 86e6), "eva02_l_mim.yaml": ("eva02_clip_l14.yaml", 304e6)}
LARGE = pytest.mark.slow  # the L models take seconds each even on the meta device


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage2_on_meta(config: str) -> torch.nn.Module:
    cfg = load_config(Stage2Config, str(ROOT / "configs/stage2" / config))
    with torch.device("meta"):
        return build_clip(cfg.model, Objective.from_config(cfg.loss, cfg.model, 131072), cfg.data.image_size)


def stage1_trunk_on_meta(config: str) -> torch.nn.Module:
    cfg = load_config(Stage1Config, str(ROOT / "configs/stage1" / config), ["teacher.weights=unused.bin"])
    with torch.device("meta"):
        return student_trunk(cfg)


@pytest.mark.parametrize("config", [c if "b16" in c else pytest.param(c, marks=LARGE) for c in STAGE2])
def test_stage2_recipe_has_the_size_of_open_clips_model_of_that_name(config):
    open_clip_cfg = dict(open_clip.get_model_config(STAGE2[config]))
    open_clip_cfg.pop("custom_text")
    with torch.device("meta"):
        reference = CustomTextCLIP(**open_clip_cfg)
    ours = stage2_on_meta(config)
    assert count(ours) == count(reference) > 1e8
    assert ours.visual.trunk.patch_embed.grid_size == reference.visual.trunk.patch_embed.grid_size


@pytest.mark.slow
@pytest.mark.parametrize("config", list(STAGE1))
def test_stage1_recipe_student_is_timms_model_and_fits_its_stage2_tower(config):
    stage2_config, paper_size = STAGE1[config]
    trunk = stage1_trunk_on_meta(config)
    cfg = load_config(Stage1Config, str(ROOT / "configs/stage1" / config), ["teacher.weights=unused.bin"])
    with torch.device("meta"):
        reference = timm.create_model(cfg.student.vision_model, num_classes=0)
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(trunk) == shapes(reference)
    assert count(trunk) == pytest.approx(paper_size, rel=0.01)
    state = {k: torch.empty(v.shape, device="meta") for k, v in trunk.state_dict().items()}
    _, report = fit_trunk_state(state, stage2_on_meta(stage2_config).visual.trunk, config, TRUNK_MAY_DIFFER)
    assert report["new"] == ["head.weight", "head.bias"] and not report["skipped"]  # the CLIP projection
    assert len(report["loaded"]) == len(state)
