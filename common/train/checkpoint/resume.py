"""Which checkpoint `--resume` means, and whether it may be loaded: verified against its manifest (with
fallback for 'auto'), trained under the same schedule, and holding tensors-only pickles."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from common.artifacts import CHECKPOINTS_DIR, ENGINE_STATE_FILE, EngineState, complete_checkpoints, is_checkpoint
from common.errors import CheckpointError, UnreadableFileError, UnsafeFileError
from common.run_context import RunContext
from common.train.checkpoint.manifest import damaged_files
from common.weights.safe_load import require_tensors_only

log = logging.getLogger("evaclip")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl")  # what accelerate and DeepSpeed write with torch.save


def _verified(path: Path) -> Path:
    problems = damaged_files(path)
    if problems:
        raise CheckpointError(f"--resume {path}: the checkpoint is damaged ({'; '.join(problems[:3])}) — resume "
                              f"from an earlier one (--resume auto picks the newest intact one) or train into a "
                              "new train.output_dir")
    return path


def resolve_resume(spec: str, output_dir: str | Path) -> Path | None:
    """`--resume` → a verified checkpoint folder. A checkpoint folder must match its manifest (else a
    one-line `CheckpointError`); 'auto' (newest in output_dir, or None to start fresh: what a requeued job
    wants) and a run folder take the newest complete checkpoint that matches, saying which were damaged."""
    path = Path(output_dir if spec == "auto" else spec)
    if is_checkpoint(path):
        return _verified(path)
    found = complete_checkpoints(path)
    if not found and spec == "auto":
        return None
    if not found:
        raise CheckpointError(f"--resume: no complete checkpoint under '{path}' — train first, or pass a run "
                              f"folder holding {CHECKPOINTS_DIR}/step_*/{ENGINE_STATE_FILE}")
    for candidate in reversed(found):
        problems = damaged_files(candidate)
        if not problems:
            return candidate
        log.warning("checkpoint %s is damaged (%s): falling back to the one before it", candidate,
                    "; ".join(problems[:3]))
    raise CheckpointError(f"--resume {spec}: all {len(found)} checkpoints under '{path}' are damaged (see the "
                          "warnings above) — nothing to resume from; train into a new train.output_dir")


def agreed_resume(accelerator: Any, spec: str, output_dir: str | Path) -> Path | None:
    """`resolve_resume` on the main process only (it reads and hashes every file), the answer (or its
    one-line error) broadcast to every rank."""
    from accelerate.utils import broadcast_object_list
    answer: list[Any] = [None, None]
    if accelerator.is_main_process:
        try:
            found = resolve_resume(spec, output_dir)
            answer = [str(found) if found is not None else None, None]
        except CheckpointError as err:
            answer = [None, str(err)]
        except OSError as err:  # an unreadable folder: every rank stops with the same line
            answer = [None, f"--resume {spec}: cannot read '{output_dir}' ({err})"]
    if accelerator.num_processes > 1:
        answer = broadcast_object_list(answer, from_process=0)
    if answer[1] is not None:
        raise CheckpointError(answer[1])
    return Path(answer[0]) if answer[0] is not None else None


def check_same_schedule(checkpoint: Path, schedule: dict[str, int], run: RunContext) -> None:
    """Refuse to resume `checkpoint` under another schedule (`train.steps`, samples per step, contrastive
    batch): its lr would jump and its data order would differ, so the run would no longer be the one that
    was checkpointed. Another number of processes is fine when both batch figures stay; the one-line error
    names what to set on this run's `run.world_size` processes (`batch_fix`)."""
    state = EngineState.read(checkpoint)
    saved = state.schedule
    for key, value in schedule.items():
        if key in saved and saved[key] != value:
            fix = (f"set train.steps {saved[key]} to resume it" if key == "steps"
                   else batch_fix(saved, state.world_size, run))
            raise CheckpointError(f"--resume {checkpoint}: it was trained with {key}={saved[key]}, this run has "
                                  f"{key}={value} — {fix}, or train into a new train.output_dir")


def _processes(n: int) -> str:
    return f"{n} process{'' if n == 1 else 'es'}"


def batch_fix(saved: dict[str, int], saved_world: int | None, run: RunContext) -> str:
    """What to set so that `run` (its world size, micro-batch, accumulations) trains the checkpoint's samples
    per step S and contrastive batch C: per process train.batch_size × train.contrastive_accum = C / processes,
    train.grad_accum = S / C; or, when C does not divide over the processes, which process counts it does."""
    samples = saved["samples_per_step"]
    contrastive = saved.get("contrastive_batch", samples)  # a checkpoint from before it was recorded
    trained = f"checkpoint trained {samples} samples per step (contrastive batch {contrastive})"
    if saved_world is not None:
        trained += f" on {_processes(saved_world)}"
    world, micro, group = run.world_size, run.micro_batch, run.contrastive_accum
    if contrastive % world:
        divisors = [n for n in range(1, contrastive + 1) if contrastive % n == 0]
        shown = ", ".join(map(str, divisors[:8])) + (", …" if len(divisors) > 8 else "")
        return (f"{trained}: {contrastive} do not divide over {_processes(world)} — resume on a number of "
                f"processes that divides {contrastive} ({shown})")
    per_process, settings = contrastive // world, []
    if micro * group != per_process:
        if per_process % group == 0:
            setting = f"train.batch_size={per_process // group}"
        else:
            setting = f"train.batch_size={per_process} and train.contrastive_accum=1"
        if group == 1 and per_process % micro == 0 and per_process > micro:  # the same memory per forward
            setting += (f" (or train.contrastive_accum={per_process // micro} at train.batch_size={micro}, in a "
                        "stage that scores contrastive batches)")
        settings.append(setting)
    if run.grad_accum * contrastive != samples:
        settings.append(f"train.grad_accum={samples // contrastive}")
    if not settings:  # the figures match: only another checkpoint format could get here
        return f"{trained}; this run trains the same"
    return f"{trained}; on {_processes(world)} set {' and '.join(settings)} to resume it"


def _deepspeed_data_classes() -> list[type]:
    """The plain-data classes DeepSpeed pickles into its ZeRO checkpoints (enums, counters, a loss scaler)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address
    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def pickle_globals(deepspeed: bool) -> list[Any]:
    """What a checkpoint's pickles may hold beyond tensors: numpy arrays (accelerate's RNG states) and, in a
    DeepSpeed run, DeepSpeed's data classes."""
    from accelerate.utils.other import TORCH_SAFE_GLOBALS  # numpy's array reconstruction, for RNG states
    return list(TORCH_SAFE_GLOBALS) + (_deepspeed_data_classes() if deepspeed else [])


def require_tensors_only_checkpoint(path: Path, deepspeed: bool) -> None:
    """Refuse (`UnsafeFileError`, one line) a checkpoint holding a pickle that would import more than
    tensors and plain data, before accelerate or DeepSpeed unpickle it (accelerate loads objects registered
    for checkpointing, DeepSpeed its ZeRO files, with `weights_only=False`). Allowed beyond torch's own:
    numpy arrays (accelerate's RNG states) and, in a DeepSpeed run, DeepSpeed's data classes."""
    allowed = pickle_globals(deepspeed)
    for file in sorted(p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES and p.is_file()):
        try:
            require_tensors_only(file, allowed)
        except (UnsafeFileError, UnreadableFileError) as err:
            raise type(err)(f"--resume {path}: {err}") from err
