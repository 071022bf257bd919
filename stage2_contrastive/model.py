"""Stage-2 model: open_clip's `CustomTextCLIP` with a timm Eva vision trunk and a text tower: open_clip's
native transformer, or a Hugging Face encoder from a local folder through open_clip's `HFTextEncoder`.

`open_clip_model_cfg()` is the single source of the model's open_clip config: the model is built from
it here, and the export writes it to `open_clip_config.json`.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any

import open_clip
from open_clip.model import CustomTextCLIP
from torch import nn

from common.train.optim import no_decay_names
from common.vision.trunk import create_eva_trunk
from stage2_contrastive.config import ModelConfig, TextConfig, resolve_hf_folder
from stage2_contrastive.objective import Objective
from stage2_contrastive.text_init import load_text_tower, named_text_cfg

log = logging.getLogger("evaclip")


def open_clip_model_cfg(cfg: ModelConfig, objective: Objective, image_size: int) -> dict[str, Any]:
    """The `model_cfg` dict open_clip builds this model from (vision tower named by `timm_model_name`)."""
    return {
        "custom_text": True,  # open_clip builds CustomTextCLIP (towers under `visual.*` / `text.*`)
        "nonscalar_logit_scale": True,  # [1]-shaped scale/bias: DeepSpeed cannot broadcast 0-d params
        "embed_dim": cfg.embed_dim,
        **({"quick_gelu": True} if text_quick_gelu(cfg.text) else {}),
        **objective.model_cfg(),
        "vision_cfg": {"timm_model_name": cfg.vision_model, "timm_model_pretrained": False,
                       "timm_pool": cfg.vision_pool, "timm_proj": VISION_PROJ[cfg.vision_proj],
                       "image_size": image_size,
                       "timm_drop_path": cfg.drop_path_rate, "patch_dropout": cfg.patch_dropout},
        "text_cfg": text_tower_cfg(cfg.text),
    }


VISION_PROJ = {"linear": "linear", "trunk_head": None}  # open_clip's timm_proj values
HF_POOLERS = {"mean": "mean_pooler", "cls": "cls_last_hidden_state_pooler"}  # open_clip's pooler names


def text_tower_cfg(text: TextConfig) -> dict[str, Any]:
    """open_clip's `text_cfg`: the native tower's shape, or an HF encoder folder (weights loaded from it,
    its own tokenizer) with pooling and a bias-free linear projection to the joint embedding."""
    if text.open_clip_model:
        return named_text_cfg(text.open_clip_model)[0]
    if not text.hf_model:
        return {"context_length": text.context_length, "vocab_size": text.vocab_size, "width": text.width,
                "heads": text.heads, "layers": text.layers}
    folder = str(resolve_hf_folder(text.hf_model))
    return {"context_length": text.context_length, "hf_model_name": folder, "hf_tokenizer_name": folder,
            "hf_model_pretrained": True, "hf_pooler_type": HF_POOLERS[text.hf_pooler], "hf_proj_type": "linear"}


def text_quick_gelu(text: TextConfig) -> bool:
    """QuickGELU in the native text tower: what the open_clip config it copies says (OpenAI's are
    `*-quickgelu`); open_clip applies it to the text tower only (the vision tower is timm's)."""
    return bool(text.open_clip_model) and named_text_cfg(text.open_clip_model)[1]


def build_clip(cfg: ModelConfig, objective: Objective, image_size: int) -> CustomTextCLIP:
    """A randomly initialised CLIP whose forward returns a dict (`output_dict=True`: image_features,
    text_features, logit_scale, logit_bias); the vision trunk is re-created at `image_size` (open_clip
    3.3's `TimmModel` does not forward `img_size` to timm) with identical parameter names."""
    model_cfg = open_clip_model_cfg(cfg, objective, image_size)
    vision_cfg = dict(model_cfg["vision_cfg"], patch_dropout=0.0)  # no throwaway 224-px trunk kwargs
    model_cfg.pop("custom_text")
    model = CustomTextCLIP(**dict(model_cfg, vision_cfg=vision_cfg), output_dict=True)  # quick_gelu: text only
    model.visual.trunk = create_eva_trunk(
        cfg.vision_model, image_size, global_pool=cfg.vision_pool, drop_path_rate=cfg.drop_path_rate,
        patch_drop_rate=cfg.patch_dropout, attention=cfg.attention,
        num_classes=cfg.embed_dim if cfg.vision_proj == "trunk_head" else 0)
    model.visual.image_size = (image_size, image_size)
    if cfg.text.weights:
        load_text_tower(model, cfg.text.weights)
    if cfg.grad_checkpointing:
        model.visual.set_grad_checkpointing(True)
    if cfg.grad_checkpointing or cfg.text.grad_checkpointing:
        set_text_grad_checkpointing(model.text)
    return model


def set_text_grad_checkpointing(text: nn.Module) -> None:
    """Activation checkpointing in the text tower; HF encoders non-reentrant (open_clip's default is
    reentrant, which computes no weight grads when a frozen embedding feeds the first layer)."""
    hf_model = getattr(text, "transformer", None)
    if hasattr(hf_model, "activation_checkpointing_enable"):  # transformers ≥ 5
        hf_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    elif hasattr(hf_model, "gradient_checkpointing_enable"):
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        text.set_grad_checkpointing(True)


def build_tokenizer(cfg: ModelConfig) -> open_clip.tokenizer.SimpleTokenizer | open_clip.tokenizer.HFTokenizer:
    """The text tower's own tokenizer at its context length: open_clip's bundled CLIP BPE for the native
    tower, the HF model folder's tokenizer (open_clip's `HFTokenizer`, as `get_tokenizer` builds it)."""
    if not cfg.text.hf_model:
        return open_clip.tokenizer.SimpleTokenizer(context_length=text_tower_cfg(cfg.text)["context_length"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # data workers fork after eval's batch encodes
    return open_clip.tokenizer.HFTokenizer(str(resolve_hf_folder(cfg.text.hf_model)),
                                           context_length=cfg.text.context_length)


# ---- text tower controls: lock, layer-wise lr decay ---------------------------------------------------
TEXT_PROJECTIONS = ("proj", "text_projection")  # HFTextEncoder.proj, TextTransformer.text_projection
_TEXT_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block|resblocks)\.(\d+)\.")


def text_encoder_params(text: nn.Module) -> list[nn.Parameter]:
    """The text tower without its projection to the joint embedding: what `lock_steps` freezes."""
    return [p for n, p in text.named_parameters() if n.split(".")[0] not in TEXT_PROJECTIONS]


def lock_towers(model: CustomTextCLIP, cfg: ModelConfig) -> None:
    """`model.lock_image` / `model.lock_text` through open_clip's own locks (`TimmModel.lock`: all but the
    last N timm groups of the trunk, batch-norm statistics frozen; `TextTransformer.lock` /
    `HFTextEncoder.lock`: all but the last N layer groups)."""
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.lock_image_unlocked_groups, freeze_bn_stats=True)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.lock_text_unlocked_layers, freeze_layer_norm=True)
    if cfg.lock_image or cfg.lock_text:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        log.info("locked %d of %d parameters (model.lock_image=%s, model.lock_text=%s)", frozen,
                 sum(p.numel() for p in model.parameters()), cfg.lock_image, cfg.lock_text)


def set_text_lock(text: nn.Module, locked: bool) -> None:
    """Freeze (`requires_grad=False`) or release the text encoder; its params get no grad while frozen,
    so AdamW/LAMB skip them and they stay bit-identical."""
    for param in text_encoder_params(text):
        param.requires_grad_(not locked)


def text_layer_ids(text: nn.Module) -> tuple[dict[str, int], int]:
    """({param name: layer id}, number of ids): embeddings 0, block i → i + 1, the rest (final norm,
    pooler, projection) last. Works for open_clip's TextTransformer and HF encoders (layer/block lists)."""
    names = [n for n, _ in text.named_parameters()]
    blocks = [int(m.group(1)) for m in map(_TEXT_LAYER.search, names) if m]
    last = (max(blocks) + 1 if blocks else 0) + 1
    ids = {}
    for name in names:
        match = _TEXT_LAYER.search(name)
        ids[name] = int(match.group(1)) + 1 if match else 0 if "embed" in name else last
    return ids, last + 1


def text_param_groups(text: nn.Module, weight_decay: float, lr_scale: float, layer_decay: float,
                      include_frozen: bool) -> list[dict[str, Any]]:
    """Param groups of the text tower: no weight decay for 1-D/bias/embedding params (as
    `common.optim.tower_param_groups`), lr_scale × layer_decay^(distance from the top); `include_frozen`
    keeps params locked for now in the optimizer (a lock that lifts later must find them there)."""
    skip = no_decay_names(text)
    ids, num_ids = text_layer_ids(text)
    groups: dict[tuple[float, bool], dict[str, Any]] = {}
    for name, param in text.named_parameters():
        if not (param.requires_grad or include_frozen):
            continue
        no_decay = param.ndim <= 1 or name.endswith(".bias") or name in skip
        scale = lr_scale * layer_decay ** (num_ids - 1 - ids[name])
        group = groups.setdefault((scale, no_decay), {"params": [], "lr_scale": scale,
                                                      "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(param)
    return list(groups.values())
