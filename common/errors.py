"""What can stop a run, by who has to act on it. The CLI maps each kind to the exit status a launcher acts
on (`common/train/cli.py`); every message is one line that names the problem and its fix.

    BadInputError   exit 2: the user's input, found before or while the run is built
      ConfigError           a config key or value, or a file or registry entry it names
      CheckpointError       a checkpoint that cannot be resumed: damaged, or of another run or schedule
      UnsafeFileError       a file that is not tensors-only (unpickling it could run code)
      UnreadableFileError   a weights file that is truncated, corrupt or of another format
      WeightsMismatchError  weights that do not fit the model they are loaded into
      NotARunError          a folder that is not a run, checkpoint or export of the expected kind
    RunFault        exit 1: a fault that stopped a run after it started (a checkpoint write failed, a rank
                    stopped answering, no shard left to read, too many non-finite steps)
"""
from __future__ import annotations


class BadInputError(ValueError):
    """Input the user can fix; the run stops before (or without) training."""


class ConfigError(BadInputError):
    """A bad config key or value, or a file, folder or registered name that a config value names."""


class CheckpointError(BadInputError):
    """A checkpoint that cannot be resumed: damaged (its manifest disagrees), unreadable, or written for
    another model, schedule or world size."""


class UnsafeFileError(BadInputError):
    """A weights or checkpoint file that is not tensors-only: unpickling it would import (and could run)
    other code."""


class UnreadableFileError(BadInputError):
    """A weights file that is truncated, corrupt, or not a safetensors / PyTorch state dict."""


class WeightsMismatchError(BadInputError):
    """A weights file whose tensors do not fit the model (another architecture, width or config)."""


class NotARunError(BadInputError):
    """The given folder is not a run (or checkpoint, or export) of the expected stage."""


class RunFault(RuntimeError):
    """A fault that stopped a run that had started; its checkpoints stay valid for `--resume`."""
