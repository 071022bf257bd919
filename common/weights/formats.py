"""The weights files the stages write, with the metadata a reader needs to rebuild the model:

    student_trunk.safetensors   stage 1: the timm trunk (timm key names); metadata `TrunkInfo`
    model.safetensors           stage 2: the CLIP in open_clip's key layout, fp32
    open_clip_config.json       stage 2: open_clip's model_cfg + preprocess_cfg, and evaclip's `ClipInfo`
    hf_text/                    stage 2 with a Hugging Face text tower: its config + tokenizer files

File names come from the run folder's map (`common.artifacts`); where they sit in a run: the same map.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from common.artifacts import CLIP_CONFIG_FILE, CLIP_WEIGHTS_FILE, HF_TEXT_DIR, TRUNK_FILE
from common.errors import NotARunError


def fp32_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict as contiguous fp32 CPU tensors (what every weights file holds)."""
    return {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}


@dataclass(frozen=True)
class TrunkInfo:
    """The metadata of `student_trunk.safetensors`: what a trunk must be built as to load it."""
    vision_model: str  # timm registered name
    image_size: int


def save_trunk(path: str | Path, state: dict[str, torch.Tensor], info: TrunkInfo) -> Path:
    """A timm trunk's weights (timm key names) as safetensors with `info` in its metadata."""
    save_file(fp32_cpu(state), str(path), metadata={"format": "pt", "vision_model": info.vision_model,
                                                    "image_size": str(info.image_size)})
    return Path(path)


def write_trunk(out_dir: str | Path, state: dict[str, torch.Tensor], info: TrunkInfo) -> Path:
    """Stage 1's `student_trunk.safetensors` in `out_dir`."""
    return save_trunk(Path(out_dir) / TRUNK_FILE, state, info)


def read_trunk_info(path: str | Path) -> Optional[TrunkInfo]:
    """The `TrunkInfo` of a trunk file; None for a safetensors file without it (e.g. a plain timm export)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "vision_model" not in meta or "image_size" not in meta:
        return None
    return TrunkInfo(meta["vision_model"], int(meta["image_size"]))


@dataclass(frozen=True)
class ClipInfo:
    """evaclip's own block of `open_clip_config.json` (open_clip ignores it)."""
    stage: int
    loss: str
    vision_model: str  # the timm registered name the trunk was trained as
    image_size: int
    init_from: Optional[str] = None  # the stage-1 trunk file `--init` loaded (absolute); None: from scratch


@dataclass
class ClipConfig:
    """`open_clip_config.json`: open_clip's `model_cfg` and `preprocess_cfg`, plus `ClipInfo`."""
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    info: ClipInfo

    def write(self, folder: str | Path) -> None:
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg,
                  "evaclip": dataclasses.asdict(self.info)}
        (Path(folder) / CLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> "ClipConfig":
        file = Path(folder) / CLIP_CONFIG_FILE
        if not file.is_file():
            raise NotARunError(f"'{folder}' has no {CLIP_CONFIG_FILE} — not a stage-2 run or export")
        config = json.loads(file.read_text())
        info = config.get("evaclip", {})
        fields = dataclasses.fields(ClipInfo)
        missing = [f.name for f in fields if f.name not in info and f.default is dataclasses.MISSING]
        if missing or "model_cfg" not in config:
            raise NotARunError(f"'{file}' was not written by an evaclip stage-2 run (no "
                               f"evaclip.{missing[0] if missing else 'model_cfg'})")
        return cls(config["model_cfg"], config.get("preprocess_cfg", {}),
                   ClipInfo(**{f.name: info[f.name] for f in fields if f.name in info}))


def write_clip(out_dir: str | Path, state_dict: dict[str, torch.Tensor], config: ClipConfig) -> None:
    """A stage-2 model: fp32 `model.safetensors` in open_clip's key layout + its `ClipConfig`."""
    save_file(fp32_cpu(state_dict), str(Path(out_dir) / CLIP_WEIGHTS_FILE), metadata={"format": "pt", "stage": "2"})
    config.write(out_dir)


def write_hf_text_files(out_dir: str | Path, hf_folder: str | Path, tokenizer: Any) -> None:
    """An HF text tower's config + tokenizer files under `out_dir/hf_text/`, so the run exports without
    the original model folder (`tokenizer`: open_clip's `HFTokenizer`)."""
    from transformers import AutoConfig
    dest = Path(out_dir) / HF_TEXT_DIR
    AutoConfig.from_pretrained(str(hf_folder), local_files_only=True).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
