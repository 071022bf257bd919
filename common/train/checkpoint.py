"""Training checkpoints: atomic writes (temp folder + completion marker + rename), `keep_last` rotation,
`--resume` resolution and the same-schedule rule. Folder names and files: `common.artifacts`."""
from __future__ import annotations

import shutil
from pathlib import Path

from common.artifacts import CHECKPOINTS_DIR, ENGINE_STATE_FILE, EngineState, complete_checkpoints, is_checkpoint
from common.config.schema import ConfigError


def temp_path(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """`--resume` → a checkpoint folder: 'auto' (newest in output_dir, or None to start fresh: what a
    requeued job wants), a run folder, or a checkpoint folder."""
    path = Path(output_dir if spec == "auto" else spec)
    if is_checkpoint(path):
        return path
    found = complete_checkpoints(path)
    if not found and spec == "auto":
        return None
    if not found:
        raise ConfigError(f"--resume: no complete checkpoint under '{path}' — train first, or pass a run "
                          f"folder holding {CHECKPOINTS_DIR}/step_*/{ENGINE_STATE_FILE}")
    return found[-1]


def check_same_schedule(ckpt: Path, schedule: dict[str, int]) -> None:
    """Refuse to resume `ckpt` under another schedule (`train.steps`, global batch): its lr would jump
    and its data order would differ, so the run would no longer be the one that was checkpointed."""
    saved = EngineState.read(ckpt).schedule
    for key, value in schedule.items():
        if key in saved and saved[key] != value:
            hint = {"steps": "set train.steps", "contrastive_batch": "use processes × train.batch_size × "
                    "train.contrastive_accum ="}.get(key, "use processes × train.batch_size × "
                                                      "train.contrastive_accum × train.grad_accum =")
            raise ConfigError(f"--resume {ckpt}: it was trained with {key}={saved[key]}, this run has "
                              f"{key}={value} — {hint} {saved[key]} to resume it, or train into a new "
                              "train.output_dir")


def finalize(tmp: Path, final: Path, state: EngineState, keep_last: int) -> None:
    """Mark `tmp` complete, rename it to `final` (atomic on one file system) and rotate old ones."""
    state.write(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
