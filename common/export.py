"""Export trained weights into the tools users already have: an open_clip folder and a timm checkpoint.

Both read the consolidated weights the engine writes with every checkpoint (accelerate's
`get_state_dict`, which gathers ZeRO-3 shards through DeepSpeed itself), so a ZeRO run and a plain
run export the same way.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from common.checkpoint import complete_checkpoints, load_weights

STAGE2_WEIGHTS, STAGE2_CONFIG = "model.safetensors", "open_clip_config.json"
STAGE1_WEIGHTS = "student_trunk.safetensors"
TIMM_SUBDIR = "timm_vision"  # timm `local-dir:` config carrying the trunk's img_size for open_clip
HF_TEXT_SUBDIR = "hf_text"  # an HF text tower's config.json (+ tokenizer files in a run; weights: safetensors)


class NotARunError(ValueError):
    """The given folder is not a run (or checkpoint) of the expected stage."""


def write_stage2_weights(out_dir: str | Path, state_dict: dict[str, torch.Tensor], model_cfg: dict[str, Any],
                         preprocess_cfg: dict[str, Any], meta: dict[str, Any]) -> None:
    """What a stage-2 run (and each checkpoint) holds for export: fp32 `model.safetensors` in open_clip's
    key layout + `open_clip_config.json` (model_cfg, preprocess_cfg, and our `evaclip` metadata)."""
    out = Path(out_dir)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}
    save_file(tensors, str(out / STAGE2_WEIGHTS), metadata={"format": "pt", "stage": "2"})
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg, "evaclip": meta}
    (out / STAGE2_CONFIG).write_text(json.dumps(config, indent=2))


def write_hf_text_files(out_dir: str | Path, hf_folder: str | Path, tokenizer: Any) -> None:
    """An HF text tower's config + tokenizer files under `out_dir/hf_text/`, so the run exports without
    the original model folder (`tokenizer`: open_clip's `HFTokenizer`)."""
    from transformers import AutoConfig
    dest = Path(out_dir) / HF_TEXT_SUBDIR
    AutoConfig.from_pretrained(str(hf_folder), local_files_only=True).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def export_hf_text(run_dir: Path, out: Path, text_cfg: dict[str, Any]) -> None:
    """Carry an HF text tower: its config to OUT/hf_text/ (open_clip builds the encoder from
    `hf_model_name` there, weights from the safetensors) and its tokenizer files to OUT itself (where
    `get_tokenizer("local-dir:OUT")` reads them). Updates `text_cfg` in place."""
    src = run_dir / HF_TEXT_SUBDIR
    if not (src / "config.json").is_file():
        raise NotARunError(f"'{run_dir}' has a Hugging Face text tower but no {HF_TEXT_SUBDIR}/config.json — "
                           "export a run or checkpoint written by this version of evaclip")
    (out / HF_TEXT_SUBDIR).mkdir(exist_ok=True)
    shutil.copy2(src / "config.json", out / HF_TEXT_SUBDIR / "config.json")
    for file in src.iterdir():
        if file.is_file() and file.name != "config.json":
            shutil.copy2(file, out / file.name)
    text_cfg.update(hf_model_name=str(out / HF_TEXT_SUBDIR), hf_tokenizer_name=str(out), hf_model_pretrained=False)


def find_weights(run_dir: str | Path, filename: str, what: str) -> Path:
    """`filename` in a run folder (top level), one of its checkpoints, or the file itself."""
    path = Path(run_dir)
    if path.is_file():
        return path
    for candidate in [path] + complete_checkpoints(path)[::-1]:
        if (candidate / filename).is_file():
            return candidate / filename
    raise NotARunError(f"'{path}' is not a {what} run folder or checkpoint (no {filename} in it or under "
                       "checkpoints/) — pass the train.output_dir of a finished run")


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
    weights = find_weights(run_dir, STAGE2_WEIGHTS, "stage-2")
    config_file = weights.with_name(STAGE2_CONFIG)
    if not config_file.is_file():
        raise NotARunError(f"'{weights.parent}' has {STAGE2_WEIGHTS} but no {STAGE2_CONFIG} — not a stage-2 run")
    config = json.loads(config_file.read_text())
    state = load_weights(weights)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = json.loads(json.dumps(config["model_cfg"]))
    vision = model_cfg["vision_cfg"]
    image_size = config["preprocess_cfg"]["size"]
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    default = timm.models.get_pretrained_cfg(vision["timm_model_name"])
    if default is None or tuple(default.input_size[-2:]) != (image_size, image_size):
        # open_clip 3.3's TimmModel never forwards img_size to timm: timm's own local-dir source does.
        timm_dir = out / TIMM_SUBDIR
        timm_dir.mkdir(exist_ok=True)
        cfg = timm_local_dir_config(vision["timm_model_name"], image_size)
        (timm_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        vision["timm_model_name"] = f"local-dir:{timm_dir}"
    vision["patch_dropout"] = 0.0
    if "hf_model_name" in model_cfg["text_cfg"]:
        export_hf_text(weights.parent, out, model_cfg["text_cfg"])
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out / "open_clip_model.safetensors"))
    (out / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": config["preprocess_cfg"],
         "evaclip": config.get("evaclip", {})}, indent=2))
    return out


def trunk_state_of(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], str, int]:
    """(timm trunk state, model name, image size) of a stage-1 or stage-2 run/checkpoint/file."""
    try:
        file = find_weights(run_dir, STAGE1_WEIGHTS, "stage-1")
    except NotARunError:
        file = None
    if file is not None and file.name == STAGE1_WEIGHTS:
        from safetensors import safe_open
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        return load_weights(file), meta["vision_model"], int(meta["image_size"])
    weights = find_weights(run_dir, STAGE2_WEIGHTS, "stage-1 or stage-2")
    config = json.loads(weights.with_name(STAGE2_CONFIG).read_text())
    state = {k[len("visual.trunk."):]: v for k, v in load_weights(weights).items() if k.startswith("visual.trunk.")}
    return state, config["evaclip"]["vision_model"], int(config["evaclip"]["image_size"])


def export_timm(run_dir: str | Path, out_file: str | Path) -> dict[str, Any]:
    """The vision trunk as a timm checkpoint for `timm.create_model(NAME, checkpoint_path=OUT, img_size=S)`;
    returns {"model_name", "image_size", "file"}."""
    state, name, size = trunk_state_of(run_dir)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out),
              metadata={"format": "pt", "vision_model": name, "image_size": str(size)})
    return {"model_name": name, "image_size": size, "file": str(out)}
