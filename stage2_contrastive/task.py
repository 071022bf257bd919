"""The stage-2 task for the shared engine: data → CLIP forward → contrastive loss; eval; weights."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from accelerate import PartialState
from PIL import Image
from torch import nn

from common import data
from common.config import ConfigError
from common.export import write_hf_text_files, write_stage2_weights
from common.optim import tower_param_groups
from common.templates import caption_of, get_templates
from common.transforms import eval_transform, preprocess_cfg, train_transform
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.loss import ContrastiveLoss
from stage2_contrastive.model import (build_clip, build_tokenizer, clamp_logit_scale, open_clip_model_cfg,
                                      set_text_lock, text_param_groups)
from stage2_contrastive.zeroshot import evaluate_clip

log = logging.getLogger("evaclip")


class ContrastiveTask:
    """Stage 2: everything the engine needs, built from a `Stage2Config`."""

    def __init__(self, cfg: Stage2Config, init: str | None = None):
        self.cfg, self.init = cfg, init
        self.train_urls = data.resolve_shards(cfg.data.train_shards)
        self.eval_urls = data.resolve_shards(cfg.data.eval_shards) if cfg.data.eval_shards else []
        self.classnames = data.read_classnames(cfg.data.train_shards)
        self.templates = get_templates(cfg.data.templates)
        self.tokenizer = build_tokenizer(cfg.model)
        size, aug = cfg.data.image_size, cfg.data.augment
        self.train_tf, self.eval_tf = train_transform(size, aug), eval_transform(size, aug)
        state = PartialState()
        self.rank, self.world_size = state.process_index, state.num_processes
        self.global_batch = cfg.train.batch_size * self.world_size
        self.loss_fn = ContrastiveLoss(cfg.loss, self.rank, self.world_size)
        lock = cfg.model.text.lock_steps
        if lock > 0 and (self.world_size > 1 or cfg.train.deepspeed):
            raise ConfigError(f"model.text.lock_steps={lock} (a lock lifted during training) needs a single "
                              "process without DeepSpeed: DDP/ZeRO fix the trained parameter set when they "
                              "wrap the model — use model.text.lock_steps=-1 (always) or 0 (never)")
        self.text_tower: nn.Module | None = None  # the model's text tower, for `lock_steps`

    # ---- model -------------------------------------------------------------------------------
    def model_cfg(self) -> dict[str, Any]:
        return open_clip_model_cfg(self.cfg.model, self.cfg.loss, self.cfg.data.image_size, self.global_batch)

    def build_model(self) -> nn.Module:
        model = build_clip(self.cfg.model, self.cfg.loss, self.cfg.data.image_size, self.global_batch)
        if self.init:
            from stage2_contrastive.init import init_vision_from_stage1
            init_vision_from_stage1(model, self.init)
        self.text_tower = model.text
        self._sync_text_lock(step=0)
        return model

    def _sync_text_lock(self, step: int) -> None:
        """Freeze the text encoder while the engine's `step < lock_steps` (always for -1), release it after."""
        lock = self.cfg.model.text.lock_steps
        if lock and self.text_tower is not None:
            set_text_lock(self.text_tower, locked=lock < 0 or step < lock)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        m, o = self.cfg.model, self.cfg.optim
        vision_wd = o.weight_decay if m.vision_weight_decay is None else m.vision_weight_decay
        text_wd = o.weight_decay if m.text.weight_decay is None else m.text.weight_decay
        groups = tower_param_groups(model.visual.trunk, vision_wd, m.vision_lr_scale, o.layer_decay)
        groups += tower_param_groups(model.visual.head, vision_wd, m.vision_lr_scale)
        groups += text_param_groups(model.text, text_wd, m.text.lr_scale, m.text.layer_decay,
                                    include_frozen=m.text.lock_steps > 0)
        scalars = [p for p in (model.logit_scale, model.logit_bias) if p is not None]
        return groups + [{"params": scalars, "weight_decay": 0.0, "lr_scale": 1.0}]

    # ---- data --------------------------------------------------------------------------------
    def _train_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        caption = caption_of(meta, self.classnames, self.templates, None)
        return {"image": self.train_tf(image), "text": self.tokenizer([caption])[0]}

    def _eval_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
        caption = caption_of(meta, self.classnames, self.templates, 0)
        return {"image": self.eval_tf(image), "label": meta["cls"], "caption": caption}

    def train_batches(self, seed: int, rank: int, world_size: int) -> Iterator[dict[str, Any]]:
        d = self.cfg.data
        return data.make_train_loader(self.train_urls, self._train_sample, self.cfg.train.batch_size,
                                      seed=seed, rank=rank, world_size=world_size,
                                      num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer)

    # ---- step --------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        out = model(batch["image"], batch["text"])
        image_features, text_features, logit_scale = out[0], out[1], out[2]
        logit_bias = out[3] if len(out) > 3 else None
        loss = self.loss_fn(image_features, text_features, logit_scale, logit_bias)
        extras = {"logit_scale": logit_scale.detach()}
        if logit_bias is not None:
            extras["logit_bias"] = logit_bias.detach()
        return loss, extras

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        clamp_logit_scale(model)
        self._sync_text_lock(step)

    # ---- eval & weights ----------------------------------------------------------------------
    def evaluate(self, model: nn.Module, accelerator: Any, final: bool = False) -> dict[str, float]:
        if not self.eval_urls or not self.classnames:
            return {}
        clip = accelerator.unwrap_model(model)
        device, dtype = accelerator.device, next(clip.parameters()).dtype

        def encode_text(texts: list[str]) -> torch.Tensor:
            return clip.encode_text(self.tokenizer(texts).to(device), normalize=True)

        def encode_image(images: torch.Tensor) -> torch.Tensor:
            return clip.encode_image(images.to(dtype), normalize=True)

        d = self.cfg.data
        batches = data.make_eval_loader(self.eval_urls, self._eval_sample, d.eval_batch_size,
                                        rank=accelerator.process_index, world_size=accelerator.num_processes,
                                        max_samples=d.eval_limit(final),
                                        num_workers=d.num_workers)
        with accelerator.autocast():
            return evaluate_clip(encode_image, encode_text, batches, self.classnames, self.templates,
                                 accelerator)

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        d = self.cfg.data
        meta = {"stage": 2, "loss": self.cfg.loss, "vision_model": self.cfg.model.vision_model,
                "image_size": d.image_size}
        model_cfg = self.model_cfg()
        write_stage2_weights(out_dir, state_dict, model_cfg, preprocess_cfg(d.image_size, d.augment), meta)
        if self.cfg.model.text.hf_model:  # the export rebuilds the encoder from its config, with its tokenizer
            write_hf_text_files(out_dir, model_cfg["text_cfg"]["hf_model_name"], self.tokenizer)
