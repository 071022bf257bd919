"""Checkpoint folders: atomic writes (temp folder + rename), discovery of the newest complete one,
`keep_last` rotation, and safe loading of weights that come from outside (safetensors / weights_only)."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.config import ConfigError

CKPT_DIR = "checkpoints"
COMPLETE_MARKER = "engine_state.json"  # written last: a folder without it is never resumed from
_STEP_RE = re.compile(r"^step_(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def temp_path(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temp or unmarked folders are ignored)."""
    root = Path(run_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_RE.match(p.name) and (p / COMPLETE_MARKER).is_file()]
    return sorted(found, key=lambda p: int(_STEP_RE.match(p.name).group(1)))


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """`--resume` → a checkpoint folder: 'auto' (newest in output_dir, or None to start fresh: what a
    requeued job wants), a run folder, or a checkpoint folder."""
    path = Path(output_dir if spec == "auto" else spec)
    if (path / COMPLETE_MARKER).is_file():
        return path
    found = complete_checkpoints(path)
    if not found and spec == "auto":
        return None
    if not found:
        raise ConfigError(f"--resume: no complete checkpoint under '{path}' — train first, or pass a run "
                          f"folder holding {CKPT_DIR}/step_*/{COMPLETE_MARKER}")
    return found[-1]


def read_engine_state(ckpt: Path) -> dict:
    return json.loads((ckpt / COMPLETE_MARKER).read_text())


def check_same_schedule(ckpt: Path, schedule: dict[str, int]) -> None:
    """Refuse to resume `ckpt` under another schedule (`train.steps`, global batch): its lr would jump
    and its data order would differ, so the run would no longer be the one that was checkpointed."""
    saved = read_engine_state(ckpt).get("schedule", {})
    for key, value in schedule.items():
        if key in saved and saved[key] != value:
            hint = ("set train.steps" if key == "steps" else "use processes × train.batch_size × "
                    "train.grad_accum =")
            raise ConfigError(f"--resume {ckpt}: it was trained with {key}={saved[key]}, this run has "
                              f"{key}={value} — {hint} {saved[key]} to resume it, or train into a new "
                              "train.output_dir")


def finalize(tmp: Path, final: Path, engine_state: dict, keep_last: int) -> None:
    """Mark `tmp` complete, rename it to `final` (atomic on one file system) and rotate old ones."""
    (tmp / COMPLETE_MARKER).write_text(json.dumps(engine_state))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file we did not write in this process: safetensors, or torch with
    `weights_only=True`. Errors name the file and what was wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt or foreign file
        raise ValueError(f"cannot read weights file '{path}' ({type(err).__name__}: {err}) — "
                         "is it a complete safetensors/PyTorch state dict?") from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
