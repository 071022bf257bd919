"""common/train/compile.py, `train.compile`: what is compiled, in place, under each mode (torch.compile's
`aot_eager` backend). (Compiled runs train, checkpoint, resume, export and `--init` like eager ones:
tests/e2e/test_compile.py.)"""
from __future__ import annotations

import pytest
from torch import nn

from common.errors import ConfigError
from common.train.compile import compile_in_place, repeated_blocks

# the tiny Eva has 12 blocks, the tiny text tower 2: each compiled, all sharing one graph per class
STAGE2_BLOCKS = 12 + 2


def tiny_clip() -> nn.Module:
    from stage2_contrastive.config import ModelConfig, TextConfig
    from stage2_contrastive.model import build_clip
    from stage2_contrastive.objective import Objective
    cfg = ModelConfig(embed_dim=32, text=TextConfig(context_length=16, width=32, heads=2, layers=2))
    return build_clip(cfg, Objective.from_config("softmax", cfg, 8), 28)


def test_blocks_are_the_eva_blocks_and_the_text_blocks():
    model = tiny_clip()
    blocks = repeated_blocks(model)
    assert blocks == [*model.visual.trunk.blocks, *model.text.transformer.resblocks]
    assert len(blocks) == STAGE2_BLOCKS


@pytest.mark.parametrize("mode, compiled", [("none", 0), ("model", 1), ("blocks", STAGE2_BLOCKS)])
def test_compiling_in_place_keeps_the_module_and_its_names(mode, compiled):
    model = tiny_clip()
    names, kind = list(model.state_dict()), type(model)
    assert compile_in_place(model, mode, backend="aot_eager") == compiled
    assert type(model) is kind and list(model.state_dict()) == names  # no `_orig_mod.`
    targets = [model] if mode == "model" else repeated_blocks(model) if mode == "blocks" else []
    assert all(m._compiled_call_impl is not None for m in targets)  # compiled on first call


def test_blocks_on_a_model_without_repeated_blocks_names_the_fix():
    with pytest.raises(ConfigError, match="no repeated blocks .* use train.compile=model"):
        compile_in_place(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), "blocks")
