"""common/train/checkpoint/write.py, a checkpoint written under faults, on the tiny linear task in this process: a
disk that fills up during a write (ENOSPC injected into accelerate's torch.save, the task's safetensors write,
or the run's top-level weights update) stops the run with one line naming the path and errno (or warns, with
`train.checkpoint_errors=warn`) and the previous checkpoint resumes; torch's errno-less report is found by a
probe write; old checkpoints rotate by `train.keep_last` and unfinished folders are never complete."""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from common.artifacts import complete_checkpoints
from common.train.checkpoint.manifest import damaged_files
from common.train.checkpoint.write import CheckpointWriteError, describe_write_error
from tests.support.run_records import assert_resumed_exactly, assert_same_weights, losses
from tests.support.tasks import linear_task
from tests.support.tasks.linear_task import CHECKPOINTED_RUN, run_linear

ENOSPC_LINE = "ENOSPC (errno 28, No space left on device)"


def fill_disk_at(monkeypatch, where: str, nth: int = 1) -> None:
    """Make the `nth` write whose path contains `where` fail the way a full disk fails it: half a file
    on disk, then ENOSPC — as an OSError from torch.save, or safetensors' own error for the task's file."""
    calls = {"n": 0}

    def hits(path) -> bool:
        if where not in str(path):
            return False
        calls["n"] += 1
        if calls["n"] != nth:
            return False
        Path(path).write_bytes(b"\0" * 64)
        return True

    real_torch_save, real_save_file = torch.save, linear_task.save_file

    def torch_save(obj, f, *args, **kwargs):
        if hits(f):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_torch_save(obj, f, *args, **kwargs)

    def save_file(tensors, filename, *args, **kwargs):
        if hits(filename):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(torch, "save", torch_save)
    monkeypatch.setattr(linear_task, "save_file", save_file)


@pytest.mark.parametrize("where", ["step_00000004.tmp/optimizer.bin", "step_00000004.tmp/weights/model.safetensors"])
def test_full_disk_during_a_checkpoint_stops_with_path_and_errno_and_the_previous_one_resumes(
        linear_reference, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, where)
    with pytest.raises(CheckpointWriteError) as stopped:
        run_linear(out, *CHECKPOINTED_RUN)
    message = str(stopped.value)
    assert "\n" not in message and f"step_00000004.tmp: {ENOSPC_LINE}" in message, message
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002"]
    assert not list((out / "checkpoints").glob("*.tmp")) and not (out / ".weights.tmp").exists()
    monkeypatch.undo()
    # the checkpoint before the failed one is intact and resumes exactly
    run_linear(out, *CHECKPOINTED_RUN, resume="auto")
    assert_resumed_exactly(out, linear_reference, from_step=2)


def test_full_disk_while_updating_the_runs_weights_keeps_the_checkpoint_and_the_old_weights(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, ".weights.tmp/model.safetensors", nth=2)  # the step-4 save's top-level copy
    with pytest.raises(CheckpointWriteError, match="checkpoint step_00000004 is complete, but rank 0 could not "
                                                   "update the run's weights files"):
        run_linear(out, *CHECKPOINTED_RUN)
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000004"]
    assert not damaged_files(out / "checkpoints" / "step_00000004")
    assert_same_weights(out, out / "checkpoints" / "step_00000002")  # the previous ones, whole


def test_checkpoint_errors_warn_goes_on_without_that_checkpoint(linear_reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, "step_00000004.tmp/optimizer.bin")
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_linear(out, *CHECKPOINTED_RUN, "train.checkpoint_errors=warn")
    assert any("checkpoint step_00000004 not written" in r.getMessage() and ENOSPC_LINE in r.getMessage()
               for r in caplog.records)
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000006"]
    assert losses(out) == losses(linear_reference)  # training itself never noticed


def test_torch_reports_a_full_disk_without_errno_so_a_probe_write_finds_it(tmp_path):
    # what torch.save raised on a full 64 KiB tmpfs (torch 2.14): no errno, no word about the disk
    torch_on_full_disk = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert Path("/dev/full").is_char_device()  # Linux's always-full device (never write to a plain file)
    (tmp_path / ".write_probe").symlink_to("/dev/full")  # writes into this folder fail with ENOSPC
    assert describe_write_error(torch_on_full_disk, tmp_path) == f"{tmp_path}: {ENOSPC_LINE}"
    assert not (tmp_path / ".write_probe").exists()  # the probe cleaned up; now a disk with room:
    assert describe_write_error(torch_on_full_disk, tmp_path).startswith(f"{tmp_path}: errno unknown (RuntimeError")


def test_keep_last_rotates_and_temp_folders_are_ignored(tmp_path):
    run_linear(tmp_path, "train.save_every=5", "train.keep_last=2")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000025", "step_00000030"]
    (tmp_path / "checkpoints" / "step_00000099.tmp").mkdir()
    (tmp_path / "checkpoints" / "step_00000098").mkdir()  # no completion marker: half written
    assert complete_checkpoints(tmp_path)[-1].name == "step_00000030"
