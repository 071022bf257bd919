"""Config sections both stages share: training loop, optimizer, data and augmentation. Stage schemas
compose them. Choices are `Literal` types declared here once; the loader checks them at load time."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from common.config.schema import ConfigError

Precision = Literal["fp32", "bf16", "fp16"]
TemplateSetName = Literal["openai", "simple", "short"]  # common.data.templates.TEMPLATE_SETS
Interpolation = Literal["bicubic", "bilinear"]  # what open_clip's PreprocessCfg accepts
ResizeMode = Literal["shortest", "longest", "squash"]
CheckpointErrors = Literal["stop", "warn"]  # a checkpoint that cannot be written: stop the run, or go on


@dataclass
class TrainConfig:
    """The engine's loop. Batch sizes are per process; the global batch is × processes × grad_accum."""
    output_dir: str = "runs/default"
    steps: int = field(default=100, metadata={"min": 1})
    batch_size: int = field(default=64, metadata={"min": 1})
    grad_accum: int = field(default=1, metadata={"min": 1})
    precision: Precision = "fp32"
    seed: int = 0
    log_every: int = field(default=10, metadata={"min": 1})
    eval_every: int = field(default=0, metadata={"min": 0})  # 0: evaluate only at the end
    save_every: int = field(default=0, metadata={"min": 0})  # 0: save only at the end
    keep_last: int = field(default=2, metadata={"min": 1})
    grad_clip: float = field(default=1.0, metadata={"min": 0.0})  # 0: off
    deepspeed: str = ""  # a JSON in configs/deepspeed/, e.g. configs/deepspeed/zero2.json
    max_bad_steps: int = field(default=5, metadata={"min": 1})  # consecutive non-finite steps before stopping
    num_threads: int = field(default=0, metadata={"min": 0})  # torch intra-op threads; 0: torch's default
    checkpoint_errors: CheckpointErrors = "stop"  # a failed checkpoint write (full disk…): stop, or warn and go on
    dist_timeout_s: float = field(default=1800.0, metadata={"min": 1.0})  # a collective waits this long for a rank
    progress: bool = True  # tqdm progress bar on the main process
    tensorboard: bool = True

    def validate(self) -> None:
        if self.deepspeed:
            from common.config.deepspeed_json import read_deepspeed_json
            read_deepspeed_json(self.deepspeed)  # exists, parses, names a ZeRO stage that exists


@dataclass
class OptimConfig:
    """AdamW or LAMB with linear warmup then cosine decay to `min_lr_ratio × lr`."""
    name: Literal["adamw", "lamb"] = "adamw"
    lr: float = field(default=1e-3, metadata={"min": 0.0})
    weight_decay: float = field(default=0.1, metadata={"min": 0.0})
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = field(default=1e-6, metadata={"min": 0.0})
    warmup_steps: int = field(default=10, metadata={"min": 0})
    min_lr_ratio: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    layer_decay: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})  # 1.0: off


@dataclass
class AugmentConfig:
    """Config section `data.augment`: the train crop/flip and the normalisation both transforms use."""
    scale: tuple[float, float] = (0.5, 1.0)  # RandomResizedCrop area range
    hflip: bool = False
    mean: tuple[float, float, float] = OPENAI_DATASET_MEAN
    std: tuple[float, float, float] = OPENAI_DATASET_STD
    interpolation: Interpolation = "bicubic"
    resize_mode: ResizeMode = "shortest"  # eval resize: shortest side + center crop (open_clip's default)

    def validate(self) -> None:
        if not 0.0 < self.scale[0] <= self.scale[1] <= 1.0:
            raise ConfigError(f"data.augment.scale={list(self.scale)} must satisfy 0 < min <= max <= 1")
        if min(self.std) <= 0:
            raise ConfigError(f"data.augment.std={list(self.std)} must be > 0 in every channel")


@dataclass
class DataConfig:
    """Webdataset shards as written by scripts/make_shards.py (a folder, brace pattern or comma list)."""
    train_shards: str = "data/fashion-mnist/train"
    eval_shards: str = "data/fashion-mnist/test"
    num_workers: int = field(default=1, metadata={"min": 0})
    shuffle_buffer: int = field(default=2000, metadata={"min": 0})
    image_size: int = field(default=56, metadata={"min": 8})
    templates: TemplateSetName = "simple"  # prompt-template set: captions from labels and zero-shot classifiers
    eval_batch_size: int = field(default=256, metadata={"min": 1})
    eval_max_samples: int = field(default=0, metadata={"min": 0})  # periodic evals: first N of the split; 0: all
    final_eval_max_samples: int = field(default=0, metadata={"min": 0})  # the end-of-run eval; 0: all
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def eval_limit(self, final: bool) -> int:
        """How many eval samples (the first N in the split's fixed order) an eval uses; 0: all."""
        return self.final_eval_max_samples if final else self.eval_max_samples
