"""Stage-2 config schema: CLIP towers, the loss switch, and the shared data/train/optim sections."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from common.config import ConfigError
from common.vit import check_vision_config
from common.sections import DataConfig, OptimConfig, TrainConfig

CLIP_BPE_VOCAB = 49408  # open_clip's bundled BPE tokenizer


@dataclass
class TextConfig:
    """open_clip's native text transformer (causal, EOT pooling) fed by open_clip's CLIP BPE tokenizer."""
    context_length: int = field(default=32, metadata={"min": 4})
    vocab_size: int = CLIP_BPE_VOCAB
    width: int = field(default=256, metadata={"min": 8})
    heads: int = field(default=4, metadata={"min": 1})
    layers: int = field(default=4, metadata={"min": 1})
    weights: str = ""  # optional local open_clip checkpoint: its `text.*` tensors initialise the tower
    lr_scale: float = field(default=1.0, metadata={"min": 0.0})


@dataclass
class ModelConfig:
    """open_clip `CustomTextCLIP`: timm Eva vision trunk (registered name) + native text tower."""
    vision_model: str = "eva02_tiny_patch14_224"
    embed_dim: int = field(default=128, metadata={"min": 1})
    attention: Literal["sdpa", "math", "xformers"] = "sdpa"
    drop_path_rate: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    patch_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.95})  # FLIP
    grad_checkpointing: bool = False
    vision_lr_scale: float = field(default=1.0, metadata={"min": 0.0})
    init_logit_scale: Optional[float] = None  # log of the multiplier; None: ln(1/0.07) softmax, ln(10) sigmoid
    init_logit_bias: Optional[float] = None  # sigmoid only; None: -ln(global batch - 1), see README
    text: TextConfig = field(default_factory=TextConfig)


@dataclass
class Stage2Config:
    loss: Literal["softmax", "sigmoid"] = "softmax"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage2"))
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        try:
            check_vision_config(self.model.vision_model, self.data.image_size)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        """Cross-field checks that no single field can make."""
        if self.model.text.vocab_size != CLIP_BPE_VOCAB:
            raise ConfigError(f"model.text.vocab_size={self.model.text.vocab_size} does not match the CLIP BPE "
                              f"tokenizer ({CLIP_BPE_VOCAB} tokens) — set model.text.vocab_size={CLIP_BPE_VOCAB}")
        if self.model.text.width % self.model.text.heads:
            raise ConfigError(f"model.text.width={self.model.text.width} is not divisible by "
                              f"model.text.heads={self.model.text.heads} — change one of them")
        if self.loss == "softmax" and self.model.init_logit_bias is not None:
            raise ConfigError("model.init_logit_bias is only used by loss: sigmoid — remove it or set loss=sigmoid")


def default_logit_scale(loss: str) -> float:
    """open_clip's / SigLIP's initial log multiplier."""
    return math.log(1 / 0.07) if loss == "softmax" else math.log(10.0)


def default_logit_bias(global_batch: int) -> float:
    """−ln(B−1): at init every pair scores σ(b) = 1/B, the prior rate of positives in a B×B batch.
    SigLIP's −10 is this prior for B ≈ 22 000; small CPU batches need the matching, milder value."""
    return -math.log(max(global_batch - 1, 1))
