"""The shared engine on a tiny regression task: it learns, checkpoints atomically, resumes exactly,
guards against non-finite steps, and runs 2 real gloo processes."""
from __future__ import annotations

import json
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import complete_checkpoints
from common.errors import CheckpointError
from common.train.engine import NonFiniteError
from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.run_records import assert_resumed_exactly, losses
from tests.support.tasks.linear_task import Crash, run_linear

run = run_linear


def test_engine_trains_and_writes_run_outputs(tmp_path):
    records = run(tmp_path)
    curve = losses(tmp_path)
    assert curve[30] < 0.1 * curve[1], curve
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "model.safetensors").is_file()
    assert any("eval" in r for r in records)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000030"]


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    full = run(tmp_path / "full", "train.save_every=10")
    with pytest.raises(Crash):
        run(tmp_path / "crashed", "train.save_every=10", "crash_at_step=15")
    assert [p.name for p in complete_checkpoints(tmp_path / "crashed")] == ["step_00000010"]
    run(tmp_path / "crashed", "train.save_every=10", resume="auto")
    # the second process began at step 10 (not 0), logged steps 11..30 once; losses and weights bit-identical
    assert_resumed_exactly(tmp_path / "crashed", tmp_path / "full", from_step=10)
    drawn = [r["batch_sum"] for r in full if "loss" in r]
    assert len(set(drawn)) == len(drawn) == 30  # the stream restarted at each checkpoint replays no batch


def test_resume_under_another_schedule_or_from_nothing_names_the_fix(tmp_path):
    run(tmp_path, "train.steps=4", "train.save_every=2")
    with pytest.raises(CheckpointError, match="trained with steps=4, this run has steps=8 — set train.steps 4"):
        run(tmp_path, "train.steps=8", resume="auto")
    with pytest.raises(CheckpointError, match="samples_per_step=16, this run has samples_per_step=32"):
        run(tmp_path, "train.steps=4", "train.batch_size=32", resume="auto")
    with pytest.raises(CheckpointError, match="no complete checkpoint under"):
        run(tmp_path / "empty", resume=str(tmp_path / "empty"))


def test_keep_last_rotates_and_temp_folders_are_ignored(tmp_path):
    run(tmp_path, "train.save_every=5", "train.keep_last=2")
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000025", "step_00000030"]
    (tmp_path / "checkpoints" / "step_00000099.tmp").mkdir()
    (tmp_path / "checkpoints" / "step_00000098").mkdir()  # no completion marker: half written
    assert complete_checkpoints(tmp_path)[-1].name == "step_00000030"


def test_non_finite_loss_is_skipped_and_counted(tmp_path):
    records = run(tmp_path, "nan_at_steps=[3, 7]")
    assert records[-2 if "eval" in records[-1] else -1]["bad_steps"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r and r["step"] not in (3, 7))


def test_non_finite_gradient_with_finite_loss_is_skipped(tmp_path):
    records = run(tmp_path, "nan_grad_at_steps=[4]", "train.steps=8")
    assert [r["bad_steps"] for r in records if "loss" in r] == [0, 0, 0, 1, 1, 1, 1, 1]
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite steps at step 6"):
        run(tmp_path, "nan_at_steps=[4, 5, 6]", "train.max_bad_steps=3", "train.save_every=2")


@pytest.mark.slow
def test_two_gloo_processes_really_run(tmp_path):
    cmd = torchrun(2, "tests.support.tasks.linear_task", str(tmp_path), "train.steps=6")
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"world_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2] and [s["dist"] for s in seen] == [2, 2]
    assert len(losses(tmp_path)) == 6
