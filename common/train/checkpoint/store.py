"""`CheckpointStore`: the checkpoints of one run, end to end — which one `--resume` means (local, or the
remote copy), whether it may be loaded, loading it, and writing a new one — so the engine asks one object.

A checkpoint is written into `step_X.tmp` (accelerate's / DeepSpeed's state from every rank, the task's
weights files in `weights/`), sealed with `engine_state.json` (the manifest of every other file), renamed
to `step_X`, then copied to the run's top level (`publish_weights`) and to `train.remote_dir`. A failed
write on any rank removes the partial folder and stops the run or warns (`write.CheckpointWrite`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import torch

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, checkpoint_weights_dir
from common.config.sections import TrainConfig
from common.errors import CheckpointError
from common.train.checkpoint.resume import agreed_resume, check_same_schedule, require_tensors_only_checkpoint
from common.train.checkpoint.write import CheckpointWrite, finalize, publish_weights, temp_path

log = logging.getLogger("evaclip")
SaveWeights = Callable[[dict[str, torch.Tensor], Path], None]  # the task's: (state dict, folder) → files


class CheckpointStore:
    """The checkpoints of the run in `run_dir` (`cfg`: the run's `train` section)."""

    def __init__(self, accelerator: Any, run_dir: Path, cfg: TrainConfig, deepspeed: bool):
        self.accelerator, self.run_dir, self.cfg, self.deepspeed = accelerator, run_dir, cfg, deepspeed

    def find_resume(self, spec: str | None, schedule: dict[str, int]) -> Path | None:
        """The verified checkpoint `--resume spec` names (None: start fresh), after fetching the newest remote
        one when 'auto' finds none locally; refused when it was trained under another `schedule`."""
        if spec is None:
            return None
        if spec == "auto" and self.cfg.remote_dir:
            from common.train.checkpoint.remote import restore_if_empty
            if self.accelerator.is_main_process:
                restore_if_empty(self.cfg.remote_dir, self.run_dir)
            self.accelerator.wait_for_everyone()
        found = agreed_resume(self.accelerator, spec, self.run_dir)
        if found is not None:
            check_same_schedule(found, schedule)
        return found

    def newest(self) -> Path | None:
        """The newest intact checkpoint of the run (what `--resume auto` would take), agreed by every rank."""
        return agreed_resume(self.accelerator, "auto", self.run_dir)

    def load(self, path: Path) -> EngineState:
        """Load accelerate's state (model, optimizer, scaler, RNG) from `path` after checking that every pickle
        in it is tensors-only; returns the engine's own state. Drops the metrics the run logged after it."""
        require_tensors_only_checkpoint(path, self.deepspeed)  # before anything unpickles it
        try:
            self.accelerator.load_state(str(path))
        except Exception as err:  # noqa: BLE001 - whatever the loader raises, the checkpoint is unusable
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"--resume {path}: cannot load this checkpoint ({type(err).__name__}: {first}) "
                                  "— it is damaged or was written for another model; resume from an earlier "
                                  "checkpoint or train into a new train.output_dir") from err
        state = EngineState.read(path)
        if self.accelerator.is_main_process:  # drop records the crashed run logged after this checkpoint
            MetricsFile(self.run_dir).truncate_after(state.step)
        log.info("resumed from %s at step %d", path, state.step)
        return state

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
