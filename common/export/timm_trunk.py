"""The vision trunk of a run as a timm checkpoint: `timm.create_model(NAME, checkpoint_path=FILE, img_size=S)`."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.artifacts import CLIP_WEIGHTS_FILE, TRUNK_FILE, find_weights
from common.errors import NotARunError
from common.weights.formats import ClipConfig, TrunkInfo, read_trunk_info, save_trunk
from common.weights.safe_load import load_weights

CLIP_TRUNK_PREFIX = "visual.trunk."  # where open_clip's TimmModel keeps the timm trunk in a CLIP state dict


def clip_trunk_state(clip_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The timm trunk's tensors (timm key names) of a CLIP state dict."""
    return {k[len(CLIP_TRUNK_PREFIX):]: v for k, v in clip_state.items() if k.startswith(CLIP_TRUNK_PREFIX)}


def trunk_state_of(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], TrunkInfo]:
    """(timm trunk state, its `TrunkInfo`) of a stage-1 or stage-2 run/checkpoint/file."""
    try:
        file = find_weights(run_dir, TRUNK_FILE, "stage-1")
    except NotARunError:
        file = None
    if file is not None and file.name == TRUNK_FILE:
        info = read_trunk_info(file)
        if info is None:
            raise NotARunError(f"'{file}' carries no vision_model/image_size metadata — not a stage-1 trunk")
        return load_weights(file), info
    weights = find_weights(run_dir, CLIP_WEIGHTS_FILE, "stage-1 or stage-2")
    info = ClipConfig.read(weights.parent).info
    return clip_trunk_state(load_weights(weights)), TrunkInfo(info.vision_model, info.image_size)


def export_timm(run_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """The vision trunk as a timm checkpoint for `timm.create_model(NAME, checkpoint_path=OUT, img_size=S)`;
    returns {"model_name", "image_size", "file"}."""
    state, info = trunk_state_of(run_dir)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_trunk(out, state, info)
    return {"model_name": info.vision_model, "image_size": info.image_size, "file": str(out)}
