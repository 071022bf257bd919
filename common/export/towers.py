"""How an export's `open_clip_config.json` names its towers, so that stock open_clip 3.3 builds them.

open_clip 3.3 builds a timm trunk by name alone (its `TimmModel` never forwards the config's `image_size`
to `timm.create_model`, and its vision config has no field for other timm arguments), and an HF text tower
from `AutoConfig.from_pretrained(hf_model_name)`. It resolves neither name against the export folder: a
`local-dir:` config is used as written, and a relative path means the caller's working directory. So:

* a trunk at its registered size, or at the size of a registered sibling that builds the same network
  (`eva02_tiny_patch14_224` trained at 336 px = `eva02_tiny_patch14_336`, checked on the weights), is
  named by that registered name: nothing to point at, the folder loads from anywhere;
* otherwise the trunk's timm config (`architecture`, `model_args.img_size`, `pretrained_cfg`) and the HF
  tower's config (`model_type`, …) share ONE `config.json`, the file both timm's `local-dir:`/`hf-hub:`
  sources and transformers' `AutoConfig` read. A `local-dir:` export names it by absolute path, inside
  a folder named after the command that fixes a moved export (`TOWERS_DIR`: the one-line error a moved
  export gives names it); a hub export keeps it at the top and names the repo (`hf-hub:ORG/NAME`).
  `relocate` rewrites those names after a move, or for the hub.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from timm.models import parse_model_name

from common.artifacts import HF_TEXT_DIR
from common.errors import NotARunError
from common.vision.trunk import create_eva_trunk
from common.weights.formats import ClipConfig, ClipInfo

RELOCATE_COMMAND = "scripts/export_open_clip.py --relocate"
TOWERS_DIR = "if-moved-run-export_open_clip.py--relocate"  # in the path a moved export fails to find
TOWER_CONFIG_FILE = "config.json"  # the name timm's local-dir:/hf-hub: sources and transformers' AutoConfig read


def registered_size(model_name: str) -> Optional[int]:
    """The (square) input size timm registers `model_name` at; None for an unknown name."""
    cfg = timm.models.get_pretrained_cfg(model_name) if timm.is_model(model_name) else None
    return None if cfg is None or cfg.input_size[-1] != cfg.input_size[-2] else cfg.input_size[-1]


def builds_same_trunk(name: str, trained_as: str, image_size: int, trunk_state: dict[str, torch.Tensor]) -> bool:
    """Whether `name` built at its registered size holds `trunk_state` and computes what `trained_as` at
    `image_size` does with it (on a random image, to 1e-6 absolute)."""
    theirs = timm.create_model(name, pretrained=False, num_classes=0, global_pool="avg").eval()
    try:
        theirs.load_state_dict(trunk_state)
    except RuntimeError:  # other tensor names or shapes: another architecture
        return False
    ours = create_eva_trunk(trained_as, image_size).eval()
    ours.load_state_dict(trunk_state)
    images = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.allclose(ours(images), theirs(images), rtol=0.0, atol=1e-6)


def registered_trunk_name(trained_as: str, image_size: int, trunk_state: dict[str, torch.Tensor]) -> Optional[str]:
    """The registered timm name open_clip can build this trunk by: `trained_as` when `image_size` is its
    registered size, else the sibling registered at `image_size` (`…_224` → `…_336`) when it builds the
    same network; None when neither does."""
    if registered_size(trained_as) == image_size:
        return trained_as
    sibling = re.sub(r"_\d+$", f"_{image_size}", trained_as)
    if sibling != trained_as and registered_size(sibling) == image_size and \
            builds_same_trunk(sibling, trained_as, image_size, trunk_state):
        return sibling
    return None


def timm_trunk_config(model_name: str, image_size: int) -> dict[str, Any]:
    """timm's own `config.json` of a trunk: the registered architecture + the img_size it was trained at."""
    pretrained = timm.models.get_pretrained_cfg(model_name)
    pretrained = pretrained.to_dict() if pretrained is not None else {}
    pretrained.update(input_size=[3, image_size, image_size], fixed_input_size=True, num_classes=0)
    for key in ("hf_hub_id", "url", "file", "source", "tag"):
        pretrained.pop(key, None)
    return {"architecture": model_name, "num_classes": 0, "model_args": {"img_size": image_size},
            "pretrained_cfg": pretrained}


def write_towers(run_folder: Path, out: Path, model_cfg: dict[str, Any], info: ClipInfo,
                 trunk_state: dict[str, torch.Tensor]) -> None:
    """Name the trunk in `model_cfg` (in place) by a registered name where one builds it, else write its
    timm config; add an HF text tower's config (and its tokenizer files to OUT, where open_clip's
    `get_tokenizer` reads them). The names are made final by `relocate`."""
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    config: dict[str, Any] = {}
    registered = registered_trunk_name(info.vision_model, info.image_size, trunk_state)
    if registered is None:
        config.update(timm_trunk_config(info.vision_model, info.image_size))
        vision["timm_model_name"] = f"local-dir:{out / TOWERS_DIR}"
    else:
        vision["timm_model_name"] = registered
    if "hf_model_name" in text:
        hf_config = copy_hf_text_files(run_folder, out)
        shared = sorted(config.keys() & hf_config.keys())
        if shared:
            raise ValueError(f"the text tower's config.json has the timm keys {shared} — rename them in "
                             f"{run_folder / HF_TEXT_DIR}/config.json or train at a registered image size")
        config.update(hf_config)
        text.update(hf_model_name=str(out / TOWERS_DIR), hf_tokenizer_name=str(out), hf_model_pretrained=False)
    if config:
        (out / TOWERS_DIR).mkdir(exist_ok=True)
        (out / TOWERS_DIR / TOWER_CONFIG_FILE).write_text(json.dumps(config, indent=2))


def copy_hf_text_files(run_folder: Path, out: Path) -> dict[str, Any]:
    """Copy the run's HF tokenizer files to OUT; return its HF text config."""
    src = run_folder / HF_TEXT_DIR
    if not (src / TOWER_CONFIG_FILE).is_file():
        raise NotARunError(f"'{run_folder}' has a Hugging Face text tower but no {HF_TEXT_DIR}/config.json — "
                           "export a run or checkpoint written by this version of evaclip")
    for file in src.iterdir():
        if file.is_file() and file.name != TOWER_CONFIG_FILE:
            shutil.copy2(file, out / file.name)
    return json.loads((src / TOWER_CONFIG_FILE).read_text())


def check_hub_id(hub_id: Optional[str]) -> None:
    """A hub repo id (`ORG/NAME`) or None; huggingface_hub's one-line `HFValidationError` (a ValueError) else."""
    if hub_id is not None:
        from huggingface_hub.utils import validate_repo_id
        validate_repo_id(hub_id)


def path_named_towers(model_cfg: dict[str, Any]) -> list[str]:
    """The towers `model_cfg` names by a path or hub repo ("vision", "text"), not by a registered name."""
    named = []
    if parse_model_name(model_cfg["vision_cfg"]["timm_model_name"])[0] is not None:
        named.append("vision")
    if "hf_model_name" in model_cfg["text_cfg"]:
        named.append("text")
    return named


def relocate(out_dir: str | Path, hub_id: Optional[str] = None) -> Optional[str]:
    """Point an export's tower names at where it is now (`local-dir:` loading), or at the hub repo
    `hub_id` (`hf-hub:` loading, config.json moved to the top). Returns the name the towers now have;
    None for an export that names none (registered trunk, native text tower: it loads from anywhere)."""
    check_hub_id(hub_id)
    out = Path(out_dir).resolve()
    config = ClipConfig.read(out)
    vision, text = config.model_cfg["vision_cfg"], config.model_cfg["text_cfg"]
    named = path_named_towers(config.model_cfg)
    if not named:
        return None
    found = [f for f in (out / TOWERS_DIR / TOWER_CONFIG_FILE, out / TOWER_CONFIG_FILE) if f.is_file()]
    if not found:
        raise NotARunError(f"'{out}' names its towers by path but holds no {TOWERS_DIR}/{TOWER_CONFIG_FILE} "
                           f"or {TOWER_CONFIG_FILE} — export the run again")
    target = out / TOWER_CONFIG_FILE if hub_id else out / TOWERS_DIR / TOWER_CONFIG_FILE
    if found[0] != target:
        target.parent.mkdir(exist_ok=True)
        found[0].replace(target)
        if found[0].parent.name == TOWERS_DIR and not any(found[0].parent.iterdir()):
            found[0].parent.rmdir()
    name = hub_id or str(target.parent)
    if "vision" in named:
        vision["timm_model_name"] = f"hf-hub:{name}" if hub_id else f"local-dir:{name}"
    if "text" in named:
        text.update(hf_model_name=name, hf_tokenizer_name=hub_id or str(out))
    config.write(out)
    return name
