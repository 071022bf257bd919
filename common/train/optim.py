"""Optimizer and learning-rate schedule: param groups from timm's helpers, AdamW or LAMB, warmup + cosine.

Param groups carry `lr_scale` (timm's convention: layer-wise lr decay, per-tower lr); the schedule
multiplies every group's own base lr, so scales survive warmup and decay.
"""
from __future__ import annotations

import math
import re
from typing import Any, Iterable

import torch
from timm.optim import create_optimizer_v2, param_groups_layer_decay, param_groups_weight_decay
from torch import nn

from common.config.sections import OptimConfig

# Parameters exempt from weight decay besides 1-D ones (norms, biases), as timm, open_clip and EVA exempt
# them: position embeddings, class/register/mask tokens, token-embedding tables, the logit scale and bias.
# Matched on the LAST name component(s), so `patch_embed.proj.weight` (a conv kernel) still decays.
NO_DECAY_NAMES = re.compile(
    r"(?:^|\.)(?:pos_embed|positional_embedding|cls_token|reg_token|mask_token|cls_emb|logit_scale|logit_bias"
    r"|(?:token_embedding|word_embeddings|position_embeddings|token_type_embeddings)\.weight)$")


def no_decay_names(module: nn.Module) -> set[str]:
    """Names in `module` exempt from weight decay: timm's `no_weight_decay()` plus `NO_DECAY_NAMES`."""
    names = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    names |= {n for n, _ in module.named_parameters() if NO_DECAY_NAMES.search(n)}
    return names


def tower_param_groups(module: nn.Module, weight_decay: float, lr_scale: float = 1.0,
                       layer_decay: float = 1.0) -> list[dict[str, Any]]:
    """Param groups of one tower: decay/no-decay split, layer-wise lr decay where the module has
    timm's `group_matcher` (ViT trunks) and `layer_decay < 1`; every group's `lr_scale` × `lr_scale`."""
    skip = no_decay_names(module)
    if layer_decay < 1.0 and hasattr(module, "group_matcher"):
        groups = param_groups_layer_decay(module, weight_decay, no_weight_decay_list=skip,
                                          layer_decay=layer_decay)
    else:
        groups = param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group["lr_scale"] = group.get("lr_scale", 1.0) * lr_scale
    return [g for g in groups if len(list(g["params"])) > 0]


def build_optimizer(groups: Iterable[dict[str, Any]], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW (torch's, fused kernel) or LAMB (timm's) over `groups`, made by timm's factory; each group's
    lr = cfg.lr × its lr_scale. AdamW uses torch's fused kernel (its speed-up: BENCHMARKS.md)."""
    groups = [dict(g, params=list(g["params"]), lr=cfg.lr * g.get("lr_scale", 1.0)) for g in groups]
    fused = {"fused": True} if cfg.name == "adamw" else {}
    return create_optimizer_v2(groups, opt=cfg.name, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               betas=tuple(cfg.betas), eps=cfg.eps, **fused)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Multiplier of the base lr at `step` (0-based): linear warmup, then cosine to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying `warmup_cosine` to every group's base lr (stepped once per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, cfg.warmup_steps, cfg.min_lr_ratio))
