"""Stage-2 model: open_clip's `CustomTextCLIP` with a timm Eva vision trunk and open_clip's text tower.

`open_clip_model_cfg()` is the single source of the model's open_clip config: the model is built from
it here, and the export writes it to `open_clip_config.json`.
"""
from __future__ import annotations

import logging
from typing import Any

import open_clip
import torch
from open_clip.model import CustomTextCLIP

from common.checkpoint import load_weights
from common.vit import create_eva_trunk
from stage2_contrastive.config import ModelConfig, default_logit_bias, default_logit_scale

log = logging.getLogger("evaclip")


def open_clip_model_cfg(cfg: ModelConfig, loss: str, image_size: int, global_batch: int) -> dict[str, Any]:
    """The `model_cfg` dict open_clip builds this model from (vision tower named by `timm_model_name`)."""
    model_cfg: dict[str, Any] = {
        "custom_text": True,  # open_clip builds CustomTextCLIP (towers under `visual.*` / `text.*`)
        "embed_dim": cfg.embed_dim,
        "init_logit_scale": cfg.init_logit_scale if cfg.init_logit_scale is not None
        else default_logit_scale(loss),
        "vision_cfg": {"timm_model_name": cfg.vision_model, "timm_model_pretrained": False,
                       "timm_pool": "avg", "timm_proj": "linear", "image_size": image_size,
                       "timm_drop_path": cfg.drop_path_rate, "patch_dropout": cfg.patch_dropout},
        "text_cfg": {"context_length": cfg.text.context_length, "vocab_size": cfg.text.vocab_size,
                     "width": cfg.text.width, "heads": cfg.text.heads, "layers": cfg.text.layers},
    }
    if loss == "sigmoid":
        model_cfg["init_logit_bias"] = (cfg.init_logit_bias if cfg.init_logit_bias is not None
                                        else default_logit_bias(global_batch))
    return model_cfg


def build_clip(cfg: ModelConfig, loss: str, image_size: int, global_batch: int) -> CustomTextCLIP:
    """A randomly initialised CLIP; the vision trunk is re-created at `image_size` (open_clip 3.3's
    `TimmModel` does not forward `img_size` to timm) with identical parameter names."""
    model_cfg = open_clip_model_cfg(cfg, loss, image_size, global_batch)
    vision_cfg = dict(model_cfg["vision_cfg"], patch_dropout=0.0)  # no throwaway 224-px trunk kwargs
    model_cfg.pop("custom_text")
    model = CustomTextCLIP(**dict(model_cfg, vision_cfg=vision_cfg))
    model.visual.trunk = create_eva_trunk(cfg.vision_model, image_size, drop_path_rate=cfg.drop_path_rate,
                                          patch_drop_rate=cfg.patch_dropout, attention=cfg.attention)
    model.visual.image_size = (image_size, image_size)
    if cfg.text.weights:
        load_text_tower(model, cfg.text.weights)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


def load_text_tower(model: CustomTextCLIP, path: str) -> None:
    """Initialise `model.text` from the `text.*` tensors of a local open_clip checkpoint (strict)."""
    state = load_weights(path)
    text_state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    if not text_state:
        raise ValueError(f"'{path}' holds no 'text.*' tensors — model.text.weights must be an open_clip "
                         "CustomTextCLIP checkpoint (e.g. an exported open_clip_model.safetensors)")
    own = model.text.state_dict()
    for key, value in text_state.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f"text tower shape mismatch for '{key}': checkpoint {tuple(value.shape)} vs "
                             f"model {tuple(own[key].shape)} — set model.text.* to the checkpoint's config")
    model.text.load_state_dict(text_state, strict=True)
    log.info("text tower initialised from %s (%d tensors)", path, len(text_state))


def build_tokenizer(cfg: ModelConfig) -> open_clip.tokenizer.SimpleTokenizer:
    """open_clip's bundled CLIP BPE tokenizer at the text tower's context length."""
    return open_clip.tokenizer.SimpleTokenizer(context_length=cfg.text.context_length)


def clamp_logit_scale(model: CustomTextCLIP, max_log: float = 4.605170185988092) -> None:
    """Keep the learned log multiplier in [0, ln 100] (as open_clip's trainer does after each step)."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, max_log)
