"""The ONE image encoder both stages use: timm's `Eva` by registered name (DESIGN.md contract 1).

Built exactly as open_clip's `TimmModel` builds its trunk (`num_classes=0`, `global_pool`), plus the
`img_size` override open_clip 3.3 does not forward; parameter names stay timm's, so stage 1 → stage 2
→ open_clip → timm needs no key renaming.
"""
from __future__ import annotations

import re

import timm
from torch import nn

from common.attention import set_attention_backend
from common.config import ConfigError


def check_vision_config(model_name: str, img_size: int) -> None:
    """Validate a (registered name, image size) pair before anything is built; one-line
    `ConfigError`s (a `ValueError`) that name the config key to fix."""
    if not model_name.startswith(("eva", "vit_")) or not timm.is_model(model_name):
        raise ConfigError(f"unknown vision model '{model_name}' — use a registered timm Eva name such as "
                          "eva02_tiny_patch14_224 (config key: model.vision_model)")
    match = re.search(r"patch(\d+)", model_name)
    patch = int(match.group(1)) if match else 16
    if img_size % patch:
        raise ConfigError(f"image size {img_size} is not divisible by the patch size {patch} of "
                          f"{model_name} — set data.image_size to a multiple of {patch}")


def create_eva_trunk(model_name: str, img_size: int, *, global_pool: str = "avg",
                     drop_path_rate: float = 0.0, patch_drop_rate: float = 0.0,
                     attention: str = "sdpa") -> nn.Module:
    """A randomly initialised timm Eva without classifier: `forward(images [B,3,S,S]) -> [B, width]`."""
    check_vision_config(model_name, img_size)
    kwargs = {"drop_path_rate": drop_path_rate}
    if patch_drop_rate > 0:
        kwargs["patch_drop_rate"] = patch_drop_rate
    trunk = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=0,
                              global_pool=global_pool, **kwargs)
    if not hasattr(trunk, "rope"):
        raise ValueError(f"'{model_name}' is not a timm Eva model — use an eva02_* name")
    set_attention_backend(trunk, attention)
    return trunk


def trunk_width(trunk: nn.Module) -> int:
    return trunk.num_features


def grid_size(trunk: nn.Module) -> tuple[int, int]:
    return tuple(trunk.patch_embed.grid_size)
