"""The ONE image encoder both stages use: timm's `Eva` by registered name (docs/ARCHITECTURE.md, "One ViT").

Built exactly as open_clip's `TimmModel` builds its trunk (`num_classes=0`, `global_pool`), plus the
`img_size` override open_clip 3.3 does not forward; parameter names stay timm's, so stage 1 → stage 2
→ open_clip → timm needs no key renaming.
"""
from __future__ import annotations

import re

import timm
from torch import nn

from common.errors import ConfigError
from common.vision.attention import AttentionBackend, set_attention_backend


def patch_size(model_name: str) -> int:
    """The patch size a registered name carries (`…_patch14_…` → 14; 16 when the name has none)."""
    match = re.search(r"patch(\d+)", model_name)
    return int(match.group(1)) if match else 16


def check_vision_config(model_name: str, img_size: int) -> None:
    """Validate a (registered name, image size) pair before anything is built; one-line
    `ConfigError`s (a `ValueError`) that name the config key to fix."""
    if not model_name.startswith(("eva", "vit_")) or not timm.is_model(model_name):
        raise ConfigError(f"unknown vision model '{model_name}' — use a registered timm Eva name such as "
                          "eva02_tiny_patch14_224 (config key: model.vision_model)")
    patch = patch_size(model_name)
    if img_size % patch:
        raise ConfigError(f"image size {img_size} is not divisible by the patch size {patch} of "
                          f"{model_name} — set data.image_size to a multiple of {patch}")


def patch_grid(model_name: str, img_size: int) -> tuple[int, int]:
    """The (rows, cols) patch grid of `model_name` at `img_size`, without building the model."""
    side = img_size // patch_size(model_name)
    return side, side


def create_eva_trunk(model_name: str, img_size: int, *, global_pool: str = "avg",
                     drop_path_rate: float = 0.0, patch_drop_rate: float = 0.0,
                     attention: AttentionBackend = "sdpa", num_classes: int = 0) -> nn.Module:
    """A randomly initialised timm Eva: `forward(images [B,3,S,S]) -> [B, width]` without classifier
    (`num_classes=0`), or `[B, num_classes]` through timm's head (a CLIP projection, open_clip's
    `timm_proj: null`)."""
    check_vision_config(model_name, img_size)
    kwargs = {"drop_path_rate": drop_path_rate}
    if patch_drop_rate > 0:
        kwargs["patch_drop_rate"] = patch_drop_rate
    trunk = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=num_classes,
                              global_pool=global_pool, **kwargs)
    if not hasattr(trunk, "rope"):
        raise ConfigError(f"'{model_name}' is not a timm Eva model — use an eva02_* name (model.vision_model)")
    if tuple(trunk.patch_embed.grid_size) != patch_grid(model_name, img_size):
        raise ConfigError(f"'{model_name}' has patch grid {tuple(trunk.patch_embed.grid_size)} at {img_size} px, "
                          f"not the {patch_grid(model_name, img_size)} its name implies — use an eva02_*_patchN_* name")
    set_attention_backend(trunk, attention)
    return trunk
