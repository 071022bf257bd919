"""common/optim.py: which parameters decay, per-group lr_scale (tower scale × layer decay), and that the
schedule keeps every group's scale: after k steps a group's lr = lr × lr_scale × warmup_cosine(k)."""
from __future__ import annotations

import math

import pytest
import timm
import torch
from torch import nn

from common.config.sections import OptimConfig
from common.train.optim import build_optimizer, build_scheduler, tower_param_groups, warmup_cosine

DEPTH, LAYER_DECAY, TOWER_SCALE, WEIGHT_DECAY = 3, 0.5, 2.0, 0.1


class TextLikeTower(nn.Module):
    """Parameters named like a text tower's, plus one named by timm's `no_weight_decay()`."""

    def __init__(self):
        super().__init__()
        self.token_embedding = nn.Embedding(10, 4)
        self.positional_embedding = nn.Parameter(torch.zeros(3, 4))
        self.logit_scale = nn.Parameter(torch.zeros(1))
        self.cls = nn.Parameter(torch.zeros(1, 4))
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)

    def no_weight_decay(self) -> set[str]:
        return {"cls"}


def settings_by_name(module: nn.Module, groups: list[dict]) -> dict[str, tuple[float, float]]:
    """{parameter name: (its group's lr_scale, weight_decay)}; every parameter in exactly one group."""
    owner = {id(p): g for g in groups for p in g["params"]}
    assert len(owner) == sum(len(g["params"]) for g in groups) == len(list(module.parameters()))
    return {n: (owner[id(p)]["lr_scale"], owner[id(p)]["weight_decay"]) for n, p in module.named_parameters()}


def test_weight_decay_skips_1d_embedding_like_and_listed_parameters():
    tower = TextLikeTower()
    settings = settings_by_name(tower, tower_param_groups(tower, WEIGHT_DECAY, lr_scale=3.0))
    assert {n for n, (_, wd) in settings.items() if wd > 0} == {"proj.weight"}
    assert all(wd in (0.0, WEIGHT_DECAY) for _, wd in settings.values())
    assert {scale for scale, _ in settings.values()} == {3.0}


def test_weight_decay_follows_the_papers_rule_on_a_real_eva_trunk_and_text_tower():
    """Decayed: every ≥ 2-D weight matrix and kernel, `patch_embed.proj.weight` (a conv kernel) included.
    Exempt: 1-D params, pos_embed, cls_token, the text tower's token and position embeddings."""
    from open_clip.transformer import TextTransformer
    trunk = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, num_classes=0, depth=1)
    text = TextTransformer(context_length=8, vocab_size=50, width=16, heads=2, layers=1, output_dim=8)
    for tower, exempt_2d in ((trunk, {"pos_embed", "cls_token"}),
                             (text, {"token_embedding.weight", "positional_embedding"})):
        settings = settings_by_name(tower, tower_param_groups(tower, WEIGHT_DECAY))
        decayed = {n for n, (_, wd) in settings.items() if wd > 0}
        expected = {n for n, p in tower.named_parameters() if p.ndim >= 2} - exempt_2d
        assert decayed == expected
    assert "patch_embed.proj.weight" in {n for n, (_, wd) in settings_by_name(
        trunk, tower_param_groups(trunk, WEIGHT_DECAY)).items() if wd > 0}


def test_layer_decay_scales_blocks_by_their_depth_times_the_tower_scale():
    """timm's layer ids: patch embedding + tokens 0, block k → k + 1, final norm DEPTH + 1 (scale 1)."""
    trunk = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, num_classes=0,
                              depth=DEPTH)
    settings = settings_by_name(trunk, tower_param_groups(trunk, WEIGHT_DECAY, TOWER_SCALE, LAYER_DECAY))

    def layer_id(name: str) -> int:
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 0 if name.startswith(("patch_embed.", "cls_token", "pos_embed")) else DEPTH + 1

    for name, (scale, wd) in settings.items():
        assert scale == pytest.approx(TOWER_SCALE * LAYER_DECAY ** (DEPTH + 1 - layer_id(name))), name
        param = trunk.get_parameter(name)
        if name.startswith("blocks.") and param.ndim >= 2:
            assert wd == WEIGHT_DECAY, name
        if param.ndim <= 1 or name in ("cls_token", "pos_embed"):
            assert wd == 0.0, name
    assert {layer_id(n) for n in settings} == set(range(DEPTH + 2))


def three_groups() -> list[dict]:
    return [{"params": [nn.Parameter(torch.ones(2, 2))], "lr_scale": 1.0, "weight_decay": WEIGHT_DECAY},
            {"params": [nn.Parameter(torch.ones(2))], "lr_scale": 0.5, "weight_decay": 0.0},
            {"params": [nn.Parameter(torch.ones(3))], "lr_scale": 0.1, "weight_decay": 0.0}]


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_each_group_starts_at_lr_times_its_scale(name):
    cfg = OptimConfig(name=name, lr=0.01, weight_decay=0.3)
    optimizer = build_optimizer(three_groups(), cfg)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.005, 0.001])
    assert [g["weight_decay"] for g in optimizer.param_groups] == [WEIGHT_DECAY, 0.0, 0.0]


def test_warmup_cosine_rises_linearly_then_decays_to_the_floor():
    total, warmup, floor = 11, 3, 0.1
    assert [warmup_cosine(s, total, warmup, floor) for s in range(3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert warmup_cosine(3, total, warmup, floor) == pytest.approx(1.0)  # cosine starts at its top
    assert warmup_cosine(7, total, warmup, floor) == pytest.approx(floor + (1 - floor) / 2)  # halfway
    three_quarters = floor + (1 - floor) * (1 + math.cos(0.75 * math.pi)) / 2
    assert warmup_cosine(9, total, warmup, floor) == pytest.approx(three_quarters)
    assert warmup_cosine(total, total, warmup, floor) == pytest.approx(floor)
    assert warmup_cosine(total + 5, total, warmup, floor) == pytest.approx(floor)


def test_schedule_keeps_every_groups_lr_scale():
    cfg = OptimConfig(lr=0.01, warmup_steps=3, min_lr_ratio=0.1)
    total = 10
    optimizer = build_optimizer(three_groups(), cfg)
    scheduler = build_scheduler(optimizer, cfg, total)
    for k in range(total + 1):  # k optimizer (and scheduler) steps taken
        factor = warmup_cosine(k, total, cfg.warmup_steps, cfg.min_lr_ratio)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [cfg.lr * scale * factor for scale in (1.0, 0.5, 0.1)]), f"after {k} steps"
        optimizer.step()
        scheduler.step()
