"""Run folders made without training, as the stages write them: a tiny CLIP, randomly initialised with perturbed
scalars, written as stage 2 writes its weights (what the export, `--init` and model-card tests start from);
a stage-1 run (config, probe evaluation, trunk file) and a stage-2 run with the records the model card reads."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, write_config
from common.config.schema import load_config
from common.config.sections import AugmentConfig
from common.data.transforms import preprocess_cfg
from common.weights.formats import ClipConfig, ClipInfo, TrunkInfo, write_clip, write_hf_text_files, write_trunk
from stage1_mim.config import Stage1Config
from stage2_contrastive.config import ModelConfig, Stage2Config, TextConfig
from stage2_contrastive.model import build_clip, build_tokenizer, open_clip_model_cfg
from stage2_contrastive.objective import Objective
from tests.support.tiny import single_process_run

IMAGE_SIZE = 28
# a tiny CLIP of embed 24 at 28 px (the starting-point tests: it fits their tiny open_clip sources)
TINY_24 = ["model.embed_dim=24", "data.image_size=28", "model.text.context_length=16", "model.text.width=32",
           "model.text.heads=2", "model.text.layers=2"]
CAPTIONS = ["a photo of a shirt.", "a bag", "an ankle boot on a white background"]


def tiny_cfg() -> ModelConfig:
    """The tiny test CLIP: embed 32, a 2-layer text tower of width 32 (the registered Eva trunk)."""
    return ModelConfig(embed_dim=32, text=TextConfig(context_length=16, width=32, heads=2, layers=2))


def trained_like_run(tmp_path: Path, loss: str, cfg: ModelConfig | None = None, image_size: int = IMAGE_SIZE,
                     name: str | None = None):
    """A 'run folder' as stage 2 writes it (an HF text tower's files included), from a randomly
    initialised model with perturbed scalars: (model, its config, the folder)."""
    torch.manual_seed(0)
    cfg = cfg or tiny_cfg()
    objective = Objective.from_config(loss, cfg, 16)
    model = build_clip(cfg, objective, image_size).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-3.5)
    run = tmp_path / (name or f"run_{loss}")
    run.mkdir()
    model_cfg = open_clip_model_cfg(cfg, objective, image_size)
    write_clip(run, model.state_dict(), ClipConfig(model_cfg, preprocess_cfg(image_size, AugmentConfig()),
                                                    ClipInfo(2, loss, cfg.vision_model, image_size)))
    if cfg.text.hf_model:
        write_hf_text_files(run, model_cfg["text_cfg"]["hf_model_name"], build_tokenizer(cfg))
    return model, cfg, run


def stage2_model(overrides: list[str], loss: str = "softmax"):
    """(a stage-2 model in eval mode, its config) for config `overrides`, built as a run builds it."""
    cfg = load_config(Stage2Config, None, [f"loss={loss}", *overrides])
    return build_clip(cfg.model, Objective.from_config(loss, cfg.model, 8), cfg.data.image_size).eval(), cfg


def stage1_run(tmp_path: Path) -> Path:
    """A stage-1 run folder (tmp_path/stage1): config (7 steps), its probe evaluation, its trunk file; returns
    the trunk file."""
    run = tmp_path / "stage1"
    write_config(run, Stage1Config(train=dataclasses.replace(Stage1Config().train, steps=7)))
    MetricsFile(run).append({"step": 7, "eval": {"probe_top1": 0.3125}})
    return write_trunk(run, {}, TrunkInfo("eva02_tiny_patch14_224", 28))


def stage2_run(tmp_path: Path, init_from: Path | None = None) -> Path:
    """A stage-2 run folder (made by `trained_like_run`): weights, config, 2 processes logged, evaluations at
    steps 5 and 10, its newest checkpoint at step 10."""
    _, _, run = trained_like_run(tmp_path, "softmax")
    config = ClipConfig.read(run)
    ClipConfig(config.model_cfg, config.preprocess_cfg,
               dataclasses.replace(config.info, init_from=init_from and str(init_from))).write(run)
    write_config(run, Stage2Config(train=dataclasses.replace(Stage2Config().train, steps=10, batch_size=8)))
    metrics = MetricsFile(run)
    figures = dataclasses.replace(single_process_run(micro_batch=8), world_size=2).batch_figures()
    metrics.append({"step": 0, "event": "start", "resumed_from": None, "world_size": 2, "batch": figures})
    metrics.append({"step": 5, "eval": {"zeroshot_top1": 0.5, "i2t_R@1": 0.25}})
    metrics.append({"step": 10, "loss": 1.0})
    metrics.append({"step": 10, "eval": {"zeroshot_top1": 0.75, "i2t_R@1": 0.375}})
    checkpoint_dir(run, 10).mkdir(parents=True)
    EngineState(10).write(checkpoint_dir(run, 10))
    return run
