"""`--init PATH`: where a stage-2 run starts from, resolved before anything is built.

    a stage-1 run (or its student_trunk.safetensors)      → the vision trunk only
    a stage-2 run or checkpoint (model.safetensors),
    an exported open_clip folder (open_clip_model.safetensors),
    or a whole open_clip / OpenAI CLIP weights file        → the whole model, to continue with a new schedule

A trunk start is strict: every trunk tensor is loaded (the position embedding resampled for another image
size), except the pooling side of a trunk (`head.*`, which a `num_classes=0` trunk does not have, and
`fc_norm.*`, which only an average-pooled trunk has). A whole-model start is strict too: every tensor is loaded, or resampled where the new config changed its
size — the trunk's position embedding for another image size (EVA-CLIP's 224 → 336 px continuation; the
RoPE tables are not stored, timm rebuilds them for the new grid), the text position embedding for another
context length (open_clip's `resize_text_pos_embed`) — or, for `logit_bias` only (a loss switched between
softmax and sigmoid), skipped or new. Config changes that store nothing (patch dropout off for FLIP's
unmasked tuning, drop-path, locks) need no conversion. The report names every key once.
"""
from __future__ import annotations

from pathlib import Path

import torch
from open_clip.model import resize_text_pos_embed
from torch import nn

from common.artifacts import CLIP_WEIGHTS_FILE, OPEN_CLIP_WEIGHTS_FILE, TRUNK_FILE, weights_folders
from common.errors import ConfigError
from common.vision.trunk_io import fit_trunk_state, load_trunk_state
from common.weights.fit import Report, Resample, fit_state_dict, load_fitted
from stage2_contrastive.text_init import read_clip_checkpoint

WEIGHT_FILES = (TRUNK_FILE, CLIP_WEIGHTS_FILE, OPEN_CLIP_WEIGHTS_FILE)
TRUNK_PREFIX = "visual.trunk."
TRUNK_MAY_DIFFER = ("head.", "fc_norm.")  # the pooling side of a trunk (classifier head, pooled norm)
CLIP_MAY_DIFFER = ("logit_bias",)  # the sigmoid loss's bias: absent from a softmax model
CLIP_FIX = "is it a CLIP of the same configuration? set model.* (embed_dim, text tower, vision_proj) to its config"


def resolve_init(path: str | Path) -> Path:
    """The weights file `--init PATH` names (module docstring); a one-line `ConfigError` when none."""
    path = Path(path)
    if path.is_file():
        return path
    for folder in weights_folders(path):
        for name in WEIGHT_FILES:
            if (folder / name).is_file():
                return folder / name
    raise ConfigError(f"--init: '{path}' holds no {', '.join(WEIGHT_FILES)} — pass a stage-1 run, a stage-2 "
                      "run or checkpoint, an exported open_clip folder, or a CLIP weights file")


def init_model(model: nn.Module, file: str | Path) -> Report:
    """Initialise `model` (a stage-2 CLIP) from `file`: a whole CLIP or a stage-1 trunk (by its keys)."""
    state = read_clip_checkpoint(file)
    if not any(k.startswith(("visual.", "text.")) for k in state):
        return load_trunk_state(model.visual.trunk, state, str(file), TRUNK_MAY_DIFFER)
    return init_from_clip(model, state, str(file))


def text_pos_resampler(model: nn.Module) -> Resample:
    """The rule that resizes a saved text position embedding to the model's context length (open_clip's)."""
    def resample(value: torch.Tensor) -> torch.Tensor:
        if value.shape[-1] != model.text.positional_embedding.shape[-1]:
            return value  # another width: not a resampling case, the fit reports both shapes
        state = {"text.positional_embedding": value}
        resize_text_pos_embed(state, model)
        return state["text.positional_embedding"]
    return resample


def init_from_clip(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> Report:
    """Load a whole CLIP state dict (open_clip `CustomTextCLIP` layout) into `model`; see the module
    docstring for what may be resampled, skipped or new. Raises `WeightsMismatchError` on anything else."""
    trunk_state = {k[len(TRUNK_PREFIX):]: v for k, v in state.items() if k.startswith(TRUNK_PREFIX)}
    fitted_trunk, trunk_report = fit_trunk_state(trunk_state, model.visual.trunk, f"--init '{source}'",
                                                 TRUNK_MAY_DIFFER)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(TRUNK_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(TRUNK_PREFIX)}
    fitted, report = fit_state_dict(rest, own, f"--init '{source}'", "model", CLIP_FIX, CLIP_MAY_DIFFER,
                                    {"text.positional_embedding": text_pos_resampler(model)})
    fitted.update({TRUNK_PREFIX + k: v for k, v in fitted_trunk.items()})
    for kind, keys in trunk_report.items():
        report[kind] = [TRUNK_PREFIX + k for k in keys] + report[kind]
    return load_fitted(model, fitted, report, source)
