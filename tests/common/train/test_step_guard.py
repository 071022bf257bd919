"""common/train/step_guard.py, the non-finite guard (on tests/support/tasks/linear_task.py in process): a step
with a non-finite loss or gradient is skipped and counted, its update never applied; when the device is read
only every `train.log_every` steps, a skipped step is counted no later than the next log step and in every
checkpoint, and `train.max_bad_steps` consecutive ones stop the run at that read."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import EngineState, checkpoint_dir, read_metrics
from common.config.schema import load_config
from common.train.engine import NonFiniteError, train
from tests.support.tasks.linear_task import LinearConfig, LinearTask, run_linear


def run(tmp_path, *overrides: str) -> None:
    """Train LinearTask in process, logging every 4 steps."""
    cfg = load_config(LinearConfig, None, [f"train.output_dir={tmp_path}", "train.log_every=4", *overrides])
    train(cfg, lambda run: LinearTask(cfg, run))


def test_skipped_steps_are_counted_at_the_next_log_step_and_in_each_checkpoint(tmp_path):
    run(tmp_path, "train.steps=8", "train.save_every=2", "train.keep_last=4", "nan_at_steps=[1, 6]")
    assert EngineState.read(tmp_path / "checkpoints" / checkpoint_dir(".", 2).name).bad_steps == 1  # not logged yet
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [(r["step"], r["bad_steps"]) for r in records] == [(4, 1), (8, 2)]
    assert all(math.isfinite(r["loss"]) for r in records)  # the mean over the window's applied steps


def test_the_bad_step_limit_stops_the_run_at_the_next_log_step(tmp_path):
    tasks: list[LinearTask] = []
    cfg = load_config(LinearConfig, None, [f"train.output_dir={tmp_path}", "train.log_every=4", "train.steps=12",
                                           "train.max_bad_steps=2", "nan_at_steps=[5, 6]"])
    with pytest.raises(NonFiniteError, match="2 consecutive non-finite steps at step 6"):
        train(cfg, lambda run: tasks.append(LinearTask(cfg, run)) or tasks[-1])
    assert tasks[0].step == 8  # detected at the step-8 read, not later
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [4]


def test_non_finite_loss_is_skipped_and_counted(tmp_path):
    records = run_linear(tmp_path, "nan_at_steps=[3, 7]")
    assert records[-2 if "eval" in records[-1] else -1]["bad_steps"] == 2
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if "loss" in r and r["step"] not in (3, 7))


def test_non_finite_gradient_with_finite_loss_is_skipped(tmp_path):
    records = run_linear(tmp_path, "nan_grad_at_steps=[4]", "train.steps=8")
    assert [r["bad_steps"] for r in records if "loss" in r] == [0, 0, 0, 1, 1, 1, 1, 1]
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_consecutive_non_finite_steps_stop_the_run(tmp_path):
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite steps at step 6"):
        run_linear(tmp_path, "nan_at_steps=[4, 5, 6]", "train.max_bad_steps=3", "train.save_every=2")
