"""`CheckpointStore`: the checkpoints of one run, end to end — which one `--resume` means (local, or the
remote copy), whether it may be loaded, loading it, and writing a new one — so the engine asks one object.

A checkpoint is written into `step_X.tmp` (accelerate's / DeepSpeed's state from every rank, the task's
weights files in `weights/`), sealed with `engine_state.json` (the manifest of every other file), renamed
to `step_X`, then copied to the run's top level (`publish_weights`) and to `train.remote_dir`. A failed
write on any rank removes the partial folder and stops the run or warns (`write.CheckpointWrite`).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, checkpoint_weights_dir, universal_dir
from common.config.sections import TrainConfig
from common.errors import CheckpointError
from common.run_context import RunContext
from common.train.checkpoint import universal
from common.train.checkpoint.resume import (
    agreed_resume,
    check_same_schedule,
    pickle_globals,
    require_tensors_only_checkpoint,
)
from common.train.checkpoint.write import CheckpointWrite, finalize, publish_weights, temp_path

log = logging.getLogger("evaclip")
SaveWeights = Callable[[dict[str, torch.Tensor], Path], None]  # the task's: (state dict, folder) → files


class CheckpointStore:
    """The checkpoints of the run in `run_dir` (`cfg`: the run's `train` section; `run`: this process's
    context, whose world size a checkpoint may differ from)."""

    def __init__(self, accelerator: Any, run_dir: Path, cfg: TrainConfig, run: RunContext):
        self.accelerator, self.run_dir, self.cfg, self.run = accelerator, run_dir, cfg, run
        self.deepspeed = run.deepspeed

    def find_resume(self, spec: str | None, schedule: dict[str, int]) -> Path | None:
        """The verified checkpoint `--resume spec` names (None: start fresh), after fetching the newest remote
        one when 'auto' finds none locally; refused (one line naming what to set on this run's processes) when
        it was trained under another `schedule`."""
        if spec is None:
            return None
        if spec == "auto" and self.cfg.remote_dir:
            from common.train.checkpoint.remote import restore_if_empty
            if self.accelerator.is_main_process:
                restore_if_empty(self.cfg.remote_dir, self.run_dir)
            self.accelerator.wait_for_everyone()
        found = agreed_resume(self.accelerator, spec, self.run_dir)
        if found is not None:
            check_same_schedule(found, schedule, self.run)
        return found

    def newest(self) -> Path | None:
        """The newest intact checkpoint of the run (what `--resume auto` would take), agreed by every rank."""
        return agreed_resume(self.accelerator, "auto", self.run_dir)

    def load(self, path: Path) -> EngineState:
        """Load accelerate's state (model, optimizer, scaler, RNG) from `path` after checking that every pickle
        in it is tensors-only; returns the engine's own state. Drops the metrics the run logged after it.
        Written on another number of processes: under DeepSpeed ZeRO through DeepSpeed's universal checkpoint,
        and every rank's RNGs seeded from (train.seed, step, rank) (`universal`)."""
        require_tensors_only_checkpoint(path, self.deepspeed)  # before anything unpickles it
        state = EngineState.read(path)
        if self._zero_stage() and universal.deepspeed_world_size(path) != self.run.world_size:
            self._load_universal(path)
        else:
            self._load_state(path)
        # accelerate's accumulation counter (saved in its RNG files, per rank) at this step's boundary, whatever
        # the backward passes per step and the number of processes that wrote it
        self.accelerator.step = state.step * self.run.backward_passes
        if state.world_size is not None and state.world_size != self.run.world_size:
            universal.reseed_for_new_world(self.cfg.seed, state.step, self.run.rank)
        if self.accelerator.is_main_process:  # drop records the crashed run logged after this checkpoint
            MetricsFile(self.run_dir).truncate_after(state.step)
        log.info("resumed from %s at step %d", path, state.step)
        return state

    def _zero_stage(self) -> int:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None) if self.deepspeed else None
        return int(plugin.zero_stage or 0) if plugin is not None else 0

    def _load_state(self, path: Path, source: Path | None = None) -> None:
        """accelerate's `load_state` of `source` (default `path`); any failure is one line about `path`."""
        try:
            self.accelerator.load_state(str(source or path))
        except Exception as err:  # noqa: BLE001 - whatever the loader raises, the checkpoint is unusable
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"--resume {path}: cannot load this checkpoint ({type(err).__name__}: {first}) "
                                  "— it is damaged or was written for another model; resume from an earlier "
                                  "checkpoint or train into a new train.output_dir") from err

    def _load_universal(self, path: Path) -> None:
        """A ZeRO checkpoint of another data-parallel world size: converted by DeepSpeed's `ds_to_universal`
        (main process) beside the run's checkpoints, loaded by DeepSpeed's universal loader on every rank,
        then removed."""
        acc, out, timeout = self.accelerator, universal_dir(self.run_dir, path), self.cfg.dist_timeout_s
        written = universal.deepspeed_world_size(path)
        universal.agreed_conversion(acc, path, out, timeout)
        failure: CheckpointError | None = None
        try:
            require_tensors_only_checkpoint(out, deepspeed=True)
            with universal.universal_loading(acc):
                self._load_state(path, source=out)
            universal.restore_param_groups(acc, out, pickle_globals(deepspeed=True))
        except CheckpointError as err:
            failure = err
        except Exception as err:  # noqa: BLE001 - the scan or the param groups: this resume cannot go on
            first = (str(err).strip().splitlines() or [""])[0][:200]
            failure = CheckpointError(f"--resume {path}: cannot load its universal checkpoint {out} "
                                      f"({type(err).__name__}: {first}) — resume it on the number of processes "
                                      "that wrote it, or train into a new train.output_dir")
        loaded = universal.all_loaded(acc, failure is not None, path, timeout)
        if acc.is_main_process:
            shutil.rmtree(out, ignore_errors=True)
        if failure is not None:
            raise failure
        if not loaded:
            raise CheckpointError(f"--resume {path}: another rank could not load its universal checkpoint (see "
                                  "that rank's error) — resume it on the number of processes that wrote it, or "
                                  "train into a new train.output_dir")
        log.info("loaded ZeRO-%d checkpoint %s of %d processes on %d through DeepSpeed's universal checkpoint",
                 self._zero_stage(), path.name, written, self.run.world_size)

    def save(self, state: EngineState, model: Any, save_weights: SaveWeights) -> Path | None:
        """Write the checkpoint of `state.step`: every rank's training state, the consolidated weights (a
        collective under ZeRO-3) through the task's `save_weights`, the marker, the top-level copy and the
        remote copy. Returns its folder, or None when it failed and `train.checkpoint_errors` is `warn`."""
        acc, final = self.accelerator, checkpoint_dir(self.run_dir, state.step)
        write = CheckpointWrite(acc, final, temp_path(final), self.cfg.checkpoint_errors, self.cfg.dist_timeout_s)
        write.attempt(lambda: acc.save_state(str(write.tmp)))
        if write.agree():  # every rank's RNG/optimizer shard is in `tmp`
            state_dict = acc.get_state_dict(model)  # gathers ZeRO-3 shards (collective)
            if acc.is_main_process:
                write.attempt(lambda: self._write_weights(save_weights, state_dict, write.tmp))
                write.attempt(lambda: finalize(write.tmp, final, state, self.cfg.keep_last))
                write.attempt(lambda: publish_weights(save_weights, state_dict, self.run_dir))
                if self.cfg.remote_dir and final.is_dir():  # after the local write is complete
                    from common.train.checkpoint.remote import RemoteRun
                    RemoteRun(self.cfg.remote_dir).push_checkpoint(self.run_dir, final, self.cfg.keep_last)
        return final if write.finish() else None

    @staticmethod
    def _write_weights(save_weights: SaveWeights, state_dict: dict[str, torch.Tensor], tmp: Path) -> None:
        folder = checkpoint_weights_dir(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        save_weights(state_dict, folder)
