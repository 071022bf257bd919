"""Resuming a checkpoint on another number of processes than wrote it.

Under DDP every rank holds the whole model and optimizer, so accelerate's files load on any number of
processes; only its RNG states are per rank (`random_states_<rank>.pkl`, one per writing process), so on
another number of processes every rank's RNGs are seeded from (train.seed, step, rank) instead
(`reseed_for_new_world`): what the resumed run draws is a function of the seed and the step.

DeepSpeed ZeRO-1/2/3 partitions the optimizer state (ZeRO-3: the parameters too) over the processes that
wrote it, and its loader refuses another data-parallel world size ("The checkpoint being loaded used a DP
world size of 2 but the current world size is 1"). The way across is DeepSpeed's universal checkpoint:
its own converter (`deepspeed.checkpoint.ds_to_universal`) rewrites the ZeRO shards as one folder per
parameter (`zero/<name>/fp32.pt`, `exp_avg.pt`, `exp_avg_sq.pt`, plus `zero/optimizer_state.pt` and the
model-states files), and its own loader — what `"checkpoint": {"load_universal": true}` in a DeepSpeed
config switches on, read by the engine as `load_universal_checkpoint()` — partitions those over the
processes that load them. The switch is set on the prepared engine for that one load only (it is read
nowhere else), so a later load of a checkpoint this run wrote takes DeepSpeed's ordinary path.

Where: the main process converts into `RUN/checkpoints/step_X.universal` (`common.artifacts.universal_dir`;
written as `.tmp`, renamed when complete; any leftover removed first), the other ranks wait for its
answer (a failure is the same one line on every rank); the checkpoint itself is only read. Its manifest
was verified and its pickles scanned (tensors and DeepSpeed's data classes only) before the converter
unpickles them; the converted folder is scanned the same way before DeepSpeed loads it, and removed once
every rank has loaded it. The folder must be on a file system every rank reads (as the checkpoint is).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from common.errors import CheckpointError
from common.train.collectives import gather_texts, max_over_ranks

log = logging.getLogger("evaclip")


def deepspeed_folder(checkpoint: Path) -> Path:
    """What DeepSpeed wrote into a checkpoint: accelerate saves the engine under the tag `pytorch_model`."""
    from accelerate.utils.constants import MODEL_NAME
    return Path(checkpoint) / MODEL_NAME


def deepspeed_world_size(checkpoint: Path) -> int:
    """The data-parallel world size a DeepSpeed ZeRO checkpoint was written on: one optimizer shard per rank."""
    return len(list(deepspeed_folder(checkpoint).glob("*optim_states.pt")))


def reseed_for_new_world(seed: int, step: int, rank: int) -> None:
    """Seed python's, numpy's and torch's RNGs of this rank from (seed, step, rank): the checkpoint's per-rank
    RNG states belong to the processes that wrote it, not to these."""
    from accelerate.utils import set_seed
    set_seed(((seed * 1_000_003 + step) * 1_009 + rank) % 2**32)


def convert(checkpoint: Path, out: Path) -> None:
    """DeepSpeed's `ds_to_universal` of `checkpoint` into `out` (via `out.tmp`, renamed when complete)."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal
    tmp = out.with_name(out.name + ".tmp")
    for leftover in out.parent.glob("*.universal*"):  # of a run that stopped while converting or loading
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = deepspeed_folder(checkpoint)
    # one worker: the converter then runs in this process (no fork of a process holding a process group);
    # inject_missing_state: ZeRO-1/2 checkpoints carry no universal_checkpoint_info unless the model sets it
    args = argparse.Namespace(input_folder=str(source), output_folder=str(tmp / source.name),
                              num_extract_workers=1, num_merge_workers=1, keep_temp_folder=False, strict=True,
                              inject_missing_state=True)
    printed = io.StringIO()  # the converter's progress lines and tqdm bars: logged at debug
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            ds_to_universal(args)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        log.debug("ds_to_universal: %s", printed.getvalue())
    tmp.rename(out)


def agreed_conversion(accelerator: Any, checkpoint: Path, out: Path, timeout_s: float) -> None:
    """`convert` on the main process, every rank waiting for its outcome; a failure is one `CheckpointError`
    on every rank."""
    error = ""
    if accelerator.is_main_process:
        started = time.monotonic()
        try:
            convert(checkpoint, out)
            log.info("converted %s to DeepSpeed's universal checkpoint %s in %.1f s", checkpoint.name, out,
                     time.monotonic() - started)
        except Exception as err:  # noqa: BLE001 - whatever the converter raises, this resume cannot go on
            first = (str(err).strip().splitlines() or [""])[0][:200]
            error = f"{type(err).__name__}: {first}"
    error = next((e for e in gather_texts(error, f"the conversion of {checkpoint.name} to a universal checkpoint",
                                          timeout_s) if e), "")
    if error:
        raise CheckpointError(f"--resume {checkpoint}: DeepSpeed could not convert it to a universal checkpoint "
                              f"({error}) — resume it on the number of processes that wrote it, or train into "
                              "a new train.output_dir")


@contextlib.contextmanager
def universal_loading(accelerator: Any) -> Iterator[None]:
    """DeepSpeed's universal loader switched on for the prepared engines during one `load_state`."""
    engines = [m for m in accelerator._models if hasattr(getattr(m, "_config", None), "load_universal_checkpoint")]
    before = [e._config.load_universal_checkpoint for e in engines]
    for engine in engines:
        engine._config.load_universal_checkpoint = True
    try:
        yield
    finally:
        for engine, value in zip(engines, before):
            engine._config.load_universal_checkpoint = value


def restore_param_groups(accelerator: Any, out: Path, allowed: list[Any]) -> None:
    """Every param group's hyperparameters (weight decay, betas, eps, lr, lr_scale, …) as the checkpoint saved
    them, group by group. DeepSpeed 0.19's ZeRO-3 universal loader writes param group 0's values into EVERY
    group (`load_hp_checkpoint_state_from_checkpoint_dir_stage3`), so a run whose decay and no-decay groups
    differ would go on with group 0's weight decay everywhere; ZeRO-1/2's loader sets them group by group,
    as this does. The values are the converter's copy of the checkpoint's (`zero/optimizer_state.pt`)."""
    from deepspeed.checkpoint.constants import PARAM_GROUPS

    from common.weights.safe_load import torch_load_tensors_only
    saved = torch_load_tensors_only(deepspeed_folder(out) / "zero" / "optimizer_state.pt", allowed)[PARAM_GROUPS]
    for engine in accelerator._models:
        groups = getattr(getattr(engine, "optimizer", None), "optimizer", None)
        groups = getattr(groups, "param_groups", None)
        if groups is None:
            continue
        if len(groups) != len(saved):
            raise CheckpointError(f"{out}: {len(saved)} param groups saved, this run's optimizer has {len(groups)} — "
                                  "resume with the config the checkpoint was trained with")
        for group, values in zip(groups, saved):
            group.update({k: v for k, v in values.items() if k != "params"})


def all_loaded(accelerator: Any, failed: bool, checkpoint: Path, timeout_s: float) -> bool:
    """Every rank's load outcome agreed (also the point after which the converted folder may go)."""
    return max_over_ranks(int(failed), f"the vote that every rank loaded {checkpoint.name}", timeout_s) == 0
