"""ONE augmentation module for both stages, on open_clip's transform machinery so that an exported
open_clip folder (`preprocess_cfg`) rebuilds exactly our eval transform.

train: RandomResizedCrop(scale, bicubic) → optional horizontal flip → RGB → tensor → normalise
eval:  open_clip's eval transform for the same preprocess config (resize shortest side, center crop)
Grayscale / palette / RGBA inputs become 3-channel RGB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range
    hflip: bool = False
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


def preprocess_cfg(image_size: int, cfg: AugmentConfig) -> dict[str, Any]:
    """The `preprocess_cfg` open_clip stores in `open_clip_config.json` for this eval transform."""
    return {"size": image_size, "mode": "RGB", "mean": list(cfg.mean), "std": list(cfg.std),
            "interpolation": cfg.interpolation, "resize_mode": cfg.resize_mode, "fill_color": 0}


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def train_transform(image_size: int, cfg: AugmentConfig) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image → augmented `[3, S, S] float32`, normalised with cfg.mean/std."""
    if not 0.0 < cfg.scale[0] <= cfg.scale[1] <= 1.0:
        raise ValueError(f"data.augment.scale={list(cfg.scale)} must satisfy 0 < min ≤ max ≤ 1")
    interpolation = T.InterpolationMode(cfg.interpolation)
    steps: list[Any] = [T.Lambda(_to_rgb),
                        T.RandomResizedCrop(image_size, scale=tuple(cfg.scale), interpolation=interpolation)]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    return T.Compose(steps)


def eval_transform(image_size: int, cfg: AugmentConfig) -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's own eval transform for `preprocess_cfg(image_size, cfg)`: `[3, S, S] float32`."""
    return image_transform_v2(PreprocessCfg(**preprocess_cfg(image_size, cfg)), is_train=False)
