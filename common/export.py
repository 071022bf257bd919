"""Export a run into the tools users already have: an open_clip folder and a timm checkpoint.

Both read the consolidated weights the engine writes with every checkpoint (accelerate's
`get_state_dict`, which gathers ZeRO-3 shards through DeepSpeed itself), so a ZeRO run and a plain
run export the same way. Run-folder files come from `common.artifacts`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from common.artifacts import (CLIP_WEIGHTS_FILE, HF_TEXT_DIR, TRUNK_FILE, ClipConfig, NotARunError, TrunkInfo,
                              find_weights, load_weights, read_trunk_info, save_trunk)

OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # the name open_clip's `local-dir:` loader reads
TIMM_DIR = "timm_vision"  # timm `local-dir:` config carrying the trunk's img_size for open_clip


def export_hf_text(run_dir: Path, out: Path, text_cfg: dict[str, Any]) -> None:
    """Carry an HF text tower: its config to OUT/hf_text/ (open_clip builds the encoder from
    `hf_model_name` there, weights from the safetensors) and its tokenizer files to OUT itself (where
    `get_tokenizer("local-dir:OUT")` reads them). Updates `text_cfg` in place."""
    src = run_dir / HF_TEXT_DIR
    if not (src / "config.json").is_file():
        raise NotARunError(f"'{run_dir}' has a Hugging Face text tower but no {HF_TEXT_DIR}/config.json — "
                           "export a run or checkpoint written by this version of evaclip")
    (out / HF_TEXT_DIR).mkdir(exist_ok=True)
    shutil.copy2(src / "config.json", out / HF_TEXT_DIR / "config.json")
    for file in src.iterdir():
        if file.is_file() and file.name != "config.json":
            shutil.copy2(file, out / file.name)
    text_cfg.update(hf_model_name=str(out / HF_TEXT_DIR), hf_tokenizer_name=str(out), hf_model_pretrained=False)


def timm_local_dir_config(model_name: str, image_size: int) -> dict[str, Any]:
    """timm's `local-dir:` config.json: the registered architecture + the img_size it was trained at."""
    pretrained = timm.models.get_pretrained_cfg(model_name)
    pretrained = pretrained.to_dict() if pretrained is not None else {}
    pretrained.update(input_size=[3, image_size, image_size], fixed_input_size=True, num_classes=0)
    for key in ("hf_hub_id", "url", "file", "source", "tag"):
        pretrained.pop(key, None)
    return {"architecture": model_name, "num_classes": 0, "model_args": {"img_size": image_size},
            "pretrained_cfg": pretrained}


def export_open_clip(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write `open_clip_config.json` + `open_clip_model.safetensors` that stock open_clip loads with
    `create_model_and_transforms("local-dir:OUT")`. Returns the output folder."""
    weights = find_weights(run_dir, CLIP_WEIGHTS_FILE, "stage-2")
    config = ClipConfig.read(weights.parent)
    state = load_weights(weights)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads(json.dumps(config.model_cfg))
    vision = model_cfg["vision_cfg"]
    image_size = config.info.image_size
    default = timm.models.get_pretrained_cfg(vision["timm_model_name"])
    if default is None or tuple(default.input_size[-2:]) != (image_size, image_size):
        # open_clip 3.3's TimmModel never forwards img_size to timm: timm's own local-dir source does.
        timm_dir = out / TIMM_DIR
        timm_dir.mkdir(exist_ok=True)
        cfg = timm_local_dir_config(vision["timm_model_name"], image_size)
        (timm_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        vision["timm_model_name"] = f"local-dir:{timm_dir}"
    vision["patch_dropout"] = 0.0
    if "hf_model_name" in model_cfg["text_cfg"]:
        export_hf_text(weights.parent, out, model_cfg["text_cfg"])
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out / OPEN_CLIP_WEIGHTS_FILE))
    ClipConfig(model_cfg, config.preprocess_cfg, config.info).write(out)
    return out


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
    prefix = "visual.trunk."
    state = {k[len(prefix):]: v for k, v in load_weights(weights).items() if k.startswith(prefix)}
    return state, TrunkInfo(info.vision_model, info.image_size)


def export_timm(run_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """The vision trunk as a timm checkpoint for `timm.create_model(NAME, checkpoint_path=OUT, img_size=S)`;
    returns {"model_name", "image_size", "file"}."""
    state, info = trunk_state_of(run_dir)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_trunk(out, state, info)
    return {"model_name": info.vision_model, "image_size": info.image_size, "file": str(out)}
