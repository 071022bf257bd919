"""A Hugging Face text tower through stage 2 (a local HF folder, its own tokenizer): a lock really freezes the
encoder and lifts on time, also after a resume, and the export reloads in stock open_clip with identical
embeddings. (The tower's parts: tests/stage2_contrastive/test_model.py.)"""
from __future__ import annotations

import shutil
from pathlib import Path

import open_clip
import pytest
import torch

from common.config.schema import load_config
from common.export import export_open_clip
from common.weights.safe_load import load_weights
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.model import build_clip, build_tokenizer
from stage2_contrastive.objective import Objective
from stage2_contrastive.train import main
from tests.support.hf_text import TEXTS, pretrained_encoder
from tests.support.run_records import assert_resumed_exactly
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2

CONFIG = STAGE2_CONFIG
LOCK_STEPS, STEPS = 2, 3


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
