"""A text tower that starts from existing CLIP weights: the architecture of any open_clip text config
(`model.text.open_clip_model`: a built-in open_clip name such as ViT-B-16 or EVA02-L-14, or an open_clip
model-config JSON) and its weights (`model.text.weights`) from an OpenAI-layout checkpoint (OpenAI's
TorchScript archive or its state dict, open_clip's `CLIP` layout) or an open_clip `CustomTextCLIP`
checkpoint, converted to open_clip's `text.*` layout with open_clip's own `convert_to_custom_text_state_dict`.
"""
from __future__ import annotations

import difflib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import convert_to_custom_text_state_dict
from torch import nn

from common.errors import ConfigError
from common.weights.fit import fit_state_dict
from common.weights.safe_load import load_weights

log = logging.getLogger("evaclip")

CLIP_BPE_VOCAB = 49408  # open_clip's bundled BPE tokenizer
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")  # ints in OpenAI's archives


def open_clip_model_config(value: str) -> dict[str, Any]:
    """The open_clip `model_cfg` named by `value`: a built-in config (`open_clip.list_models()`) or a JSON
    file holding one (or an `open_clip_config.json` with a `model_cfg` entry)."""
    path = Path(value).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"model.text.open_clip_model='{value}': file not found — a built-in open_clip "
                              "name (e.g. ViT-B-16) or an open_clip model-config JSON")
        config = json.loads(path.read_text())
        return config.get("model_cfg", config)
    config = open_clip.get_model_config(value)
    if config is None:
        close = difflib.get_close_matches(value, open_clip.list_models(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else "see open_clip.list_models()"
        raise ConfigError(f"model.text.open_clip_model='{value}' is not an open_clip model config — {hint}")
    return config


def named_text_cfg(value: str) -> tuple[dict[str, Any], bool]:
    """(text_cfg, quick_gelu) of the open_clip config `value`; one-line errors for a tower this project
    cannot build offline with the CLIP BPE tokenizer (a Hugging Face tower, another tokenizer)."""
    config = open_clip_model_config(value)
    text_cfg = dict(config.get("text_cfg", {}))
    where = f"model.text.open_clip_model='{value}'"
    if not text_cfg:
        raise ConfigError(f"{where} has no text_cfg — name a CLIP model config")
    if "hf_model_name" in text_cfg:
        raise ConfigError(f"{where} has a Hugging Face text tower — use model.text.hf_model=LOCAL_FOLDER instead")
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("vocab_size", CLIP_BPE_VOCAB) != CLIP_BPE_VOCAB:
        raise ConfigError(f"{where} needs its own tokenizer, not the CLIP BPE — name a config with "
                          f"vocab_size {CLIP_BPE_VOCAB} and no hf_tokenizer_name")
    return text_cfg, bool(config.get("quick_gelu", False))


def read_clip_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict in open_clip's `CustomTextCLIP` layout (`visual.*`, `text.*`, `logit_scale`) from
    a safetensors/torch file or OpenAI's TorchScript archive (read with `torch.jit.load`)."""
    try:
        state = load_weights(path)
    except ValueError:
        if not _is_torchscript(path):
            raise
        state = torch.jit.load(str(path), map_location="cpu").state_dict()
    state = {k: v for k, v in state.items() if k not in OPENAI_EXTRA_KEYS}
    return convert_to_custom_text_state_dict(state)


def _is_torchscript(path: str | Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def load_text_tower(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Initialise `model.text` from the text tower of a CLIP checkpoint, strictly (every tensor of the
    tower, shapes checked); returns the report {"loaded": [...], "resampled": [], "skipped": [...], "new": []}
    (skipped: the checkpoint's other tensors, e.g. its vision tower)."""
    state = read_clip_checkpoint(path)
    text_state = {k[len("text."):]: v for k, v in state.items() if k.startswith("text.")}
    if not text_state:
        raise ConfigError(f"model.text.weights='{path}' holds no text tower (no 'text.*' or OpenAI-layout "
                          "'transformer.*' tensors) — pass an OpenAI or open_clip CLIP checkpoint")
    fix = "set model.text.open_clip_model (and model.embed_dim) to the checkpoint's config"
    fitted, _ = fit_state_dict(text_state, model.text.state_dict(), f"model.text.weights '{path}'", "text tower", fix)
    model.text.load_state_dict(fitted, strict=True)
    report = {"loaded": [f"text.{k}" for k in text_state], "resampled": [],
              "skipped": sorted(k for k in state if not k.startswith("text.")), "new": []}
    log.info("text tower initialised from %s: %d tensors loaded, %d others skipped", path,
             len(report["loaded"]), len(report["skipped"]))
    return report
