"""ONE augmentation module for both stages, on open_clip's transform machinery, so that an exported
open_clip folder (its `preprocess_cfg`) rebuilds exactly our eval transform.

train: RGB → RandomResizedCrop(scale, cfg.interpolation) → optional horizontal flip → tensor → normalise
       (with hflip off and bicubic: the same ops, in the same RNG order, as open_clip's train transform)
eval:  open_clip's own `image_transform_v2(PreprocessCfg(**preprocess_cfg(...)), is_train=False)`
Grayscale / palette / RGBA inputs become 3-channel RGB; every output is `[3, S, S] float32`.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T

from common.config.sections import AugmentConfig


def preprocess_cfg(image_size: int, cfg: AugmentConfig) -> dict[str, Any]:
    """The `preprocess_cfg` dict open_clip stores in `open_clip_config.json` (`PreprocessCfg` fields)."""
    return {"size": image_size, "mode": "RGB", "mean": [float(v) for v in cfg.mean],
            "std": [float(v) for v in cfg.std], "interpolation": cfg.interpolation,
            "resize_mode": cfg.resize_mode, "fill_color": 0}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, P, RGBA, I;16, …) → RGB; RGB images pass through untouched."""
    return image if image.mode == "RGB" else image.convert("RGB")


def train_transform(image_size: int, cfg: AugmentConfig) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → augmented `[3, S, S] float32`, normalised with cfg.mean/std (torch RNG)."""
    steps: list[Callable] = [to_rgb, T.RandomResizedCrop(
        image_size, scale=tuple(cfg.scale), interpolation=T.InterpolationMode(cfg.interpolation))]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


def eval_transform(image_size: int, cfg: AugmentConfig) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval transform for `preprocess_cfg(image_size, cfg)`: `[3, S, S] float32`."""
    return image_transform_v2(PreprocessCfg(**preprocess_cfg(image_size, cfg)), is_train=False)
