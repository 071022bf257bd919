"""Mixed precision through the engine (tests/support/tasks/stream_task.py, in process): bf16 autocast trains with
gradient accumulation; fp16 loss scaling skips an overflowing step, halves its scale and goes on."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import complete_checkpoints, read_metrics
from common.config.schema import load_config
from common.train.engine import train
from tests.support.tasks.stream_task import StreamConfig, StreamTask

GROWTH_INTERVAL = 2000  # torch GradScaler's default: no growth within these runs


def run(out: Path, *overrides: str) -> tuple[list[dict], StreamTask]:
    """(the loss records, the task) of a run of StreamTask under `overrides`."""
    cfg = load_config(StreamConfig, None, [f"train.output_dir={out}", *overrides])
    tasks: list[StreamTask] = []
    train(cfg, lambda run: tasks.append(StreamTask(cfg, run)) or tasks[-1])
    return [r for r in read_metrics(out) if "loss" in r], tasks[0]


def test_bf16_with_grad_accum_trains_in_bf16(tmp_path):
    records, task = run(tmp_path, "train.precision=bf16", "train.grad_accum=2", "train.steps=8")
    assert task.hidden_dtypes == {torch.bfloat16}  # autocast really ran
    assert [r["bad_steps"] for r in records] == [0] * 8
    assert records[-1]["loss"] < 0.5 * records[0]["loss"], [r["loss"] for r in records]
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.float32}  # fp32 master weights


@pytest.mark.parametrize("bad", ["huge_at_calls", pytest.param("nan_at_calls", marks=pytest.mark.slow)])
def test_fp16_overflow_step_is_skipped_the_scale_halves_and_training_goes_on(tmp_path, bad):
    # micro-batch 3 = step 2 of K = 2: huge: its loss is finite, its scaled fp16 gradients overflow;
    # nan: its loss is NaN, its gradients finite (the engine poisons them so that the scaler skips the step)
    records, task = run(tmp_path, "train.precision=fp16", "train.grad_accum=2", "train.steps=4",
                        f"{bad}=[3]", "train.max_bad_steps=2")
    assert task.hidden_dtypes == {torch.float16}
    assert [r["bad_steps"] for r in records] == [0, 1, 1, 1]
    assert [math.isfinite(r["loss"]) for r in records] == [True, False, True, True]  # step 2: nothing applied
    scaler = torch.load(complete_checkpoints(tmp_path)[-1] / "scaler.pt", weights_only=True)
    assert scaler["scale"] == 2.0**16 / 2 and scaler["_growth_tracker"] == 2  # halved once, 2 good steps since
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
