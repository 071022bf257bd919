"""common/train/checkpoint/resume.py (with manifest.py), what a resume accepts: a checkpoint damaged after it was
written (truncated, bit-flipped) is refused by name and `--resume auto` falls back to the one before, never
starting over; a resume under another schedule or from nothing names the fix; every pickle of a checkpoint
that would run code is refused with one line before anything loads it."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from common.artifacts import complete_checkpoints
from common.errors import CheckpointError, UnsafeFileError
from common.train.checkpoint import resume as ckpt
from stage2_contrastive.train import main as stage2_main
from tests.support.payloads import poison
from tests.support.run_records import assert_resumed_exactly, reseal
from tests.support.tasks.linear_task import CHECKPOINTED_RUN, Crash, run_linear
from tests.support.tiny import STAGE2_CONFIG, one_line_error


@pytest.fixture(scope="module")
def crashed(linear_reference, tmp_path_factory) -> Path:
    """The reference run crashed at step 5: complete checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("crashed") / "run"
    with pytest.raises(Crash):
        run_linear(out, *CHECKPOINTED_RUN, "crash_at_step=5")
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000004"]
    return out


def flip_one_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_name_and_auto_falls_back_to_the_one_before(
        crashed, linear_reference, caplog):
    newest = crashed / "checkpoints" / "step_00000004"
    optimizer = newest / "optimizer.bin"
    size = optimizer.stat().st_size
    optimizer.write_bytes(optimizer.read_bytes()[: size // 2])  # truncated after it was written
    with pytest.raises(CheckpointError) as refused:
        run_linear(crashed, *CHECKPOINTED_RUN, resume=str(newest))
    assert str(refused.value).startswith(f"--resume {newest}: the checkpoint is damaged (optimizer.bin has "
                                         f"{size // 2} bytes, the manifest says {size})")
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_linear(crashed, *CHECKPOINTED_RUN, resume="auto")
    assert any(f"checkpoint {newest} is damaged" in r.getMessage() and "falling back" in r.getMessage()
               for r in caplog.records)
    assert_resumed_exactly(crashed, linear_reference, from_step=2)


def test_a_bit_flip_is_caught_and_auto_never_starts_over_when_every_checkpoint_is_damaged(linear_reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(linear_reference / "checkpoints", run_dir / "checkpoints")
    checkpoints = complete_checkpoints(run_dir)
    flip_one_bit(checkpoints[-1] / "model.safetensors", offset=-5)  # a tensor byte: same size, other content
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match its sha256 in the manifest"):
        ckpt.resolve_resume(str(checkpoints[-1]), run_dir)
    assert ckpt.resolve_resume("auto", run_dir) == checkpoints[-2]
    for older in checkpoints[:-1]:
        (older / "random_states_0.pkl").unlink()
    with pytest.raises(CheckpointError, match=f"all {len(checkpoints)} checkpoints under .* are damaged"):
        ckpt.resolve_resume("auto", run_dir)


def test_resume_under_another_schedule_or_from_nothing_names_the_fix(tmp_path):
    run_linear(tmp_path, "train.steps=4", "train.save_every=2")
    with pytest.raises(CheckpointError, match="trained with steps=4, this run has steps=8 — set train.steps 4"):
        run_linear(tmp_path, "train.steps=8", resume="auto")
    with pytest.raises(CheckpointError, match="samples_per_step=16, this run has samples_per_step=32"):
        run_linear(tmp_path, "train.steps=4", "train.batch_size=32", resume="auto")
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        run_linear(tmp_path / "empty", resume=str(tmp_path / "empty"))


def test_a_poisoned_optimizer_state_is_one_line_and_runs_nothing(stage2_overrides, tmp_path, capsys):
    args = ["--config", STAGE2_CONFIG, *stage2_overrides, "train.steps=1"]
    assert stage2_main(args) == 0
    capsys.readouterr()
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "payload_ran"
    poison(checkpoint / "optimizer.bin", marker)
    reseal(checkpoint)  # its manifest rewritten with it: the tensors-only check must catch it
    assert stage2_main([*args, "--resume", str(checkpoint)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: --resume {checkpoint}: '{checkpoint / 'optimizer.bin'}' would import os.makedirs")
    assert not marker.exists()


@pytest.mark.parametrize("name", ["random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_any_pickle_of_a_checkpoint_that_would_run_code_is_refused_at_resume(linear_checkpoint, tmp_path, name):
    # random_states: accelerate would fail to load it and go on without a word (unseeded); custom_checkpoint:
    # what accelerate unpickles with weights_only=False for registered objects (older evaclip checkpoints)
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / linear_checkpoint.name
    shutil.copytree(linear_checkpoint, checkpoint)
    marker = tmp_path / "payload_ran"
    poison(checkpoint / name, marker)
    reseal(checkpoint)
    with pytest.raises(UnsafeFileError, match=f"'{checkpoint / name}' would import os.makedirs — refused"):
        run_linear(run_dir, "train.steps=2", resume="auto")
    assert not marker.exists()
