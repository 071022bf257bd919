"""The stage-2 task for the shared engine: data → CLIP forward → contrastive objective; eval; weights."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import torch
from PIL import Image
from torch import nn

from common.data.eval_sets import ZeroShotSet, check_label
from common.data.run_data import RunData
from common.data.templates import build_zeroshot_classifier, caption_of, get_templates
from common.data.transforms import eval_transform, preprocess_cfg, train_transform
from common.evaluation.classify import zeroshot_accuracy
from common.run_context import RunContext
from common.train.optim import tower_param_groups
from common.weights.formats import ClipConfig, ClipInfo, write_clip, write_hf_text_files
from stage2_contrastive.accumulation import cached_contrastive_passes
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.model import (
    build_clip,
    build_tokenizer,
    lock_towers,
    open_clip_model_cfg,
    set_text_lock,
    text_param_groups,
)
from stage2_contrastive.objective import Objective
from stage2_contrastive.zeroshot import PairLoss, evaluate_clip

log = logging.getLogger("evaclip")


class ContrastiveTask:
    """Stage 2: everything the engine needs, built from a `Stage2Config`, the run's context and an
    optional weights file to start from (`--init`: a stage-1 trunk or a whole CLIP, starting_point.py)."""

    def __init__(self, cfg: Stage2Config, run: RunContext, init: str | Path | None = None):
        self.cfg, self.run, self.init = cfg, run, init
        self.data = RunData(cfg.data, cfg.eval, run.rank, run.world_size, run.micro_batch)
        self.templates = get_templates(cfg.data.templates)
        self.tokenizer = build_tokenizer(cfg.model)
        size, aug = cfg.data.image_size, cfg.data.augment
        self.train_tf, self.eval_tf = train_transform(size, aug), eval_transform(size, aug)
        self.objective = Objective.from_config(cfg.loss, cfg.model, run.contrastive_batch)
        self.loss_fn = self.objective.loss(run.rank, run.world_size)
        self.eval_loss_fn = self.objective.loss(0, 1)  # on the gathered held-out features, on every rank
        self.text_tower: nn.Module | None = None  # the model's text tower, for `lock_steps`

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        model = build_clip(self.cfg.model, self.objective, self.cfg.data.image_size)
        if self.init:
            from stage2_contrastive.starting_point import init_model
            init_model(model, self.init)
        lock_towers(model, self.cfg.model)
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
    def train_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One training pair: `image` [3, H, W] and `text` [context_length] token ids of one caption."""
        caption = caption_of(meta, self.data.train_classnames(meta), self.templates, None)
        return {"image": self.train_tf(image), "text": self.tokenizer([caption])[0]}

    def eval_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
        """A held-out pair: image, caption (its first, or the label's first template), label (−1: none)."""
        caption = caption_of(meta, self.data.classnames, self.templates, 0)
        label = meta["cls"] if meta["cls"] is not None else -1
        return {"image": self.eval_tf(image), "label": label, "caption": caption, "index": meta["index"]}

    def _zeroshot_sample(self, zs: ZeroShotSet) -> Any:
        def sample(image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
            return {"image": self.eval_tf(image), "label": check_label(meta, len(zs.classnames))}
        return sample

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        return self.data.train_batches(self.train_sample, seed)

    # ---- step --------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        return self._score(model(batch["image"], batch["text"]))

    def contrastive_group(self, model: nn.Module, batches: list[dict[str, Any]]
                          ) -> Iterator[tuple[torch.Tensor, dict]]:
        """`train.contrastive_accum`: the micro-batches scored as one batch (`accumulation.py`)."""
        return cached_contrastive_passes(lambda b: model(b["image"], b["text"]), batches, self._score)

    def _score(self, out: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """(loss, extras) of the model's outputs for one contrastive batch."""
        logit_bias = out.get("logit_bias")
        loss = self.loss_fn(out["image_features"], out["text_features"], out["logit_scale"], logit_bias)
        extras = {"logit_scale": out["logit_scale"].detach()}
        if logit_bias is not None:
            extras["logit_bias"] = logit_bias.detach()
        return loss, extras

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        self.objective.clamp_(model)
        self._sync_text_lock(step)

    # ---- eval & weights ----------------------------------------------------------------------
    def evaluate(self, clip: nn.Module, final: bool = False) -> dict[str, float]:
        """Held-out split: loss, retrieval, zero-shot when labelled (`zeroshot.evaluate_clip`); then every
        `eval.zeroshot` set's top-1/top-5 under its name."""
        device, dtype = self.run.device, next(clip.parameters()).dtype

        def encode_text(texts: list[str]) -> torch.Tensor:
            return clip.encode_text(self.tokenizer(texts).to(device), normalize=True)

        def encode_image(images: torch.Tensor) -> torch.Tensor:
            return clip.encode_image(images.to(device, dtype), normalize=True)

        metrics: dict[str, Any] = {}
        if self.data.eval_urls:
            loss = PairLoss(self.eval_loss_fn, clip.logit_scale.exp(), getattr(clip, "logit_bias", None),
                            self.run.contrastive_batch)
            batches = self.data.eval_batches(self.eval_sample, final)
            metrics.update(evaluate_clip(encode_image, encode_text, batches, self.data.classnames,
                                         self.templates, device, loss))
        for zs in self.data.zeroshot_sets:
            classifier = build_zeroshot_classifier(encode_text, zs.classnames, zs.templates)
            batches = self.data.eval_batches(self._zeroshot_sample(zs), final, zs.urls)
            metrics[zs.name] = zeroshot_accuracy(encode_image, classifier, batches, device)
        return metrics

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        d, m = self.cfg.data, self.cfg.model
        model_cfg = open_clip_model_cfg(m, self.objective, d.image_size)
        info = ClipInfo(stage=2, loss=self.cfg.loss, vision_model=m.vision_model, image_size=d.image_size,
                        init_from=str(Path(self.init).resolve()) if self.init else None)
        write_clip(out_dir, state_dict, ClipConfig(model_cfg, preprocess_cfg(d.image_size, d.augment), info))
        if m.text.hf_model:  # the export rebuilds the encoder from its config, with its tokenizer
            write_hf_text_files(out_dir, model_cfg["text_cfg"]["hf_model_name"], self.tokenizer)
