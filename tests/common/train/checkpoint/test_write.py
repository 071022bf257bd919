"""Checkpoints under faults, on the tiny linear task in this process: a disk that fills up during a write
(ENOSPC injected into accelerate's torch.save, the task's safetensors write, or the run's top-level weights
update) and a checkpoint damaged after it was written (truncated, bit-flipped), caught by its manifest."""
from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from common.artifacts import complete_checkpoints
from common.errors import CheckpointError
from common.train.checkpoint import resume as ckpt
from common.train.checkpoint.manifest import damaged_files
from common.train.checkpoint.write import CheckpointWriteError, describe_write_error
from common.train.preemption import REQUEUE_EXIT_STATUS
from tests.support.run_records import assert_resumed_exactly, assert_same_weights, losses
from tests.support.tasks import linear_task
from tests.support.tasks.linear_task import Crash, run_linear

RUN = ["train.steps=6", "train.save_every=2", "train.keep_last=3"]
ENOSPC_LINE = "ENOSPC (errno 28, No space left on device)"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every recovery must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_linear(out, *RUN)
    return out


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
        reference, tmp_path, monkeypatch, where):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, where)
    with pytest.raises(CheckpointWriteError) as stopped:
        run_linear(out, *RUN)
    message = str(stopped.value)
    assert "\n" not in message and f"step_00000004.tmp: {ENOSPC_LINE}" in message, message
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002"]
    assert not list((out / "checkpoints").glob("*.tmp")) and not (out / ".weights.tmp").exists()
    monkeypatch.undo()
    run_linear(out, *RUN, resume="auto")  # the checkpoint before the failed one is intact and resumes exactly
    assert_resumed_exactly(out, reference, from_step=2)


def test_full_disk_while_updating_the_runs_weights_keeps_the_checkpoint_and_the_old_weights(tmp_path, monkeypatch):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, ".weights.tmp/model.safetensors", nth=2)  # the step-4 save's top-level copy
    with pytest.raises(CheckpointWriteError, match="checkpoint step_00000004 is complete, but rank 0 could not "
                                                   "update the run's weights files"):
        run_linear(out, *RUN)
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000004"]
    assert not damaged_files(out / "checkpoints" / "step_00000004")
    assert_same_weights(out, out / "checkpoints" / "step_00000002")  # the previous ones, whole


def test_checkpoint_errors_warn_goes_on_without_that_checkpoint(reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    fill_disk_at(monkeypatch, "step_00000004.tmp/optimizer.bin")
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_linear(out, *RUN, "train.checkpoint_errors=warn")
    assert any("checkpoint step_00000004 not written" in r.getMessage() and ENOSPC_LINE in r.getMessage()
               for r in caplog.records)
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000006"]
    assert losses(out) == losses(reference)  # training itself never noticed


def test_torch_reports_a_full_disk_without_errno_so_a_probe_write_finds_it(tmp_path):
    # what torch.save raised on a full 64 KiB tmpfs (torch 2.14): no errno, no word about the disk
    torch_on_full_disk = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert Path("/dev/full").is_char_device()  # Linux's always-full device (never write to a plain file)
    (tmp_path / ".write_probe").symlink_to("/dev/full")  # writes into this folder fail with ENOSPC
    assert describe_write_error(torch_on_full_disk, tmp_path) == f"{tmp_path}: {ENOSPC_LINE}"
    assert not (tmp_path / ".write_probe").exists()  # the probe cleaned up; now a disk with room:
    assert describe_write_error(torch_on_full_disk, tmp_path).startswith(f"{tmp_path}: errno unknown (RuntimeError")


def test_sigterm_checkpoints_at_that_step_exits_75_and_resumes_exactly(reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert linear_task.main([str(out), *RUN, "signal_at_step=3"]) == REQUEUE_EXIT_STATUS
    assert capsys.readouterr().err.strip() == (f"preempted: stopped at step 3 on SIGTERM: checkpoint "
                                               f"{out / 'checkpoints' / 'step_00000003'} written — requeue the "
                                               "same command with --resume auto (exit status 75)")
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000003"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the engine's handler is gone with the run
    assert linear_task.main([str(out), *RUN, "--resume", "auto"]) == 0
    # step 3 is no periodic checkpoint: the resumed stream is the one started at step 2, moved on by a step
    assert_resumed_exactly(out, reference, from_step=3)


# ---- damaged after it was written ----------------------------------------------------------------
@pytest.fixture(scope="module")
def crashed(reference, tmp_path_factory) -> Path:
    """The reference run crashed at step 5: complete checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(Crash):
        run_linear(out, *RUN, "crash_at_step=5")
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000004"]
    return out


def flip_one_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_name_and_auto_falls_back_to_the_one_before(
        crashed, reference, caplog):
    newest = crashed / "checkpoints" / "step_00000004"
    optimizer = newest / "optimizer.bin"
    size = optimizer.stat().st_size
    optimizer.write_bytes(optimizer.read_bytes()[: size // 2])  # truncated after it was written
    with pytest.raises(CheckpointError) as refused:
        run_linear(crashed, *RUN, resume=str(newest))
    assert str(refused.value).startswith(f"--resume {newest}: the checkpoint is damaged (optimizer.bin has "
                                         f"{size // 2} bytes, the manifest says {size})")
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_linear(crashed, *RUN, resume="auto")
    assert any(f"checkpoint {newest} is damaged" in r.getMessage() and "falling back" in r.getMessage()
               for r in caplog.records)
    assert_resumed_exactly(crashed, reference, from_step=2)


def test_a_bit_flip_is_caught_and_auto_never_starts_over_when_every_checkpoint_is_damaged(reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(reference / "checkpoints", run_dir / "checkpoints")
    checkpoints = complete_checkpoints(run_dir)
    flip_one_bit(checkpoints[-1] / "model.safetensors", offset=-5)  # a tensor byte: same size, other content
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its sha256 in the manifest"):
        ckpt.resolve_resume(str(checkpoints[-1]), run_dir)
    assert ckpt.resolve_resume("auto", run_dir) == checkpoints[-2]
    for older in checkpoints[:-1]:
        (older / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match=f"all {len(checkpoints)} checkpoints under .* are damaged"):
        ckpt.resolve_resume("auto", run_dir)
