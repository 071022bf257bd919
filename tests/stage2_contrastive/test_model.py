"""stage2_contrastive.model.build_clip: `model.grad_checkpointing` really checkpoints both towers (each
block's forward runs again in backward), `model.text.grad_checkpointing` the text tower only."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip
from stage2_contrastive.objective import Objective

IMAGE_SIZE, BATCH = 28, 2


def tiny_model_cfg(grad_checkpointing: bool, text_grad_checkpointing: bool) -> ModelConfig:
    text = TextConfig(context_length=8, width=32, heads=2, layers=2, grad_checkpointing=text_grad_checkpointing)
    return ModelConfig(embed_dim=16, grad_checkpointing=grad_checkpointing, text=text)


def block_forward_calls(model: nn.Module) -> dict[str, int]:
    """How often the first vision block and the first text block start a forward in one training step
    (forward + backward): 1 without checkpointing, 2 with it (the backward recomputes the block; a
    pre-hook, since torch's recomputation may stop before the block's end, skipping forward hooks)."""
    blocks = {"vision": model.visual.trunk.blocks[0], "text": model.text.transformer.resblocks[0]}
    calls = dict.fromkeys(blocks, 0)
    hooks = [block.register_forward_pre_hook(lambda *_, tower=tower: calls.__setitem__(tower, calls[tower] + 1))
             for tower, block in blocks.items()]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=gen)
    texts = torch.randint(1, 1000, (BATCH, 8), generator=gen)
    model.train()
    out = model(images, texts)
    (out["image_features"] * out["text_features"]).sum().backward()
    for hook in hooks:
        hook.remove()
    return calls


@pytest.mark.parametrize("both, text_only, expected", [
    (False, False, {"vision": 1, "text": 1}),
    (True, False, {"vision": 2, "text": 2}),
    (False, True, {"vision": 1, "text": 2}),
], ids=["off", "both_towers", "text_only"])
def test_grad_checkpointing_recomputes_the_configured_towers(both, text_only, expected):
    torch.manual_seed(0)
    cfg = tiny_model_cfg(both, text_only)
    model = build_clip(cfg, Objective.from_config("softmax", cfg, BATCH), IMAGE_SIZE)
    assert model.visual.trunk.grad_checkpointing is (expected["vision"] == 2)
    assert model.text.transformer.grad_checkpointing is (expected["text"] == 2)
    assert block_forward_calls(model) == expected
