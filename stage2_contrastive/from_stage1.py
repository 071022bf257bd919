"""`--init`: the CLIP vision trunk initialised from a stage-1 student trunk, strictly.

Every trunk tensor is loaded, except the allow-listed classifier-side keys (`head.*`, which a
`num_classes=0` trunk does not have); position embeddings are resampled when the image size differs.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from common.artifacts import TRUNK_FILE, load_weights
from common.config.schema import ConfigError
from common.vision.trunk_io import load_trunk_state

MAY_DIFFER = ("head.",)  # explicit allow-list: a classifier head, never part of the contrastive trunk


def resolve_stage1_trunk(path: str | Path) -> Path:
    """A stage-1 run folder (its newest `student_trunk.safetensors`) or the file itself; `ConfigError`
    (one line) when there is none."""
    path = Path(path)
    if path.is_dir():
        path = path / TRUNK_FILE
    if not path.is_file():
        raise ConfigError(f"--init: '{path}' not found — pass a stage-1 run folder holding {TRUNK_FILE} "
                          "or the file itself")
    return path


def init_vision_from_stage1(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Load the stage-1 trunk into `model.visual.trunk`; returns the loaded/skipped/new report."""
    file = resolve_stage1_trunk(path)
    return load_trunk_state(model.visual.trunk, load_weights(file), str(file), MAY_DIFFER)
