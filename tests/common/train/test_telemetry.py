"""Telemetry in every loss record (common/train/telemetry.py): data wait against a loader slowed on purpose,
the one data-wait warning, and MFU against a hand count of the linear task's FLOPs."""
from __future__ import annotations

import logging

import pytest

from common.artifacts import read_metrics
from tests.support.tasks.operated_task import run_operated

# the linear task: Linear(4, 8) → Dropout → Linear(8, 1) on batches of 16, inputs without gradient
BATCH = 16
FORWARD = 2 * BATCH * (4 * 8 + 8 * 1)  # two addmm
BACKWARD = 2 * FORWARD - 2 * BATCH * 4 * 8  # weight and input gradients, but no input gradient of layer 1
FLOPS_PER_SAMPLE = (FORWARD + BACKWARD) / BATCH  # 176


def loss_records(out):
    return [r for r in read_metrics(out) if "loss" in r]


def test_data_wait_is_the_share_of_the_step_spent_on_a_slow_loader_and_warns_once(tmp_path, caplog):
    """A loader sleeping 40 ms per batch beside a 40 ms step: data wait ≈ half of the step time (mutation:
    not timing `next()` → share 0, the test fails)."""
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_operated(tmp_path / "run", "train.steps=30", "train.log_every=5", "loader_sleep=0.04",
                     "step_sleep=0.04", "train.data_wait_warn=0.3", "train.telemetry=true")
    records = loss_records(tmp_path / "run")
    shares = [r["data_wait_share"] for r in records[1:]]  # the first window holds the start-up
    assert all(0.3 < share < 0.7 for share in shares), shares
    for r in records:
        assert r["data_wait_s"] + r["compute_s"] == pytest.approx(r["step_time_s"], rel=1e-6)
    warnings = [m for m in caplog.messages if m.startswith("data wait is")]
    assert len(warnings) == 1 and "data.num_workers" in warnings[0], warnings


def test_a_fast_loader_raises_no_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="evaclip"):
        run_operated(tmp_path / "run", "train.steps=24", "train.log_every=4", "step_sleep=0.03", "train.telemetry=true")
    assert not [m for m in caplog.messages if m.startswith("data wait is")]
    assert max(r["data_wait_share"] for r in loss_records(tmp_path / "run")[1:]) < 0.3


def test_mfu_is_the_counted_flops_per_sample_times_samples_per_second_over_the_peak(tmp_path):
    """FLOPs per sample equal the hand count of the model's matmuls (mutation: counting the batch's
    generation too, or dividing by the wrong sample count, changes it)."""
    run_operated(tmp_path / "run", "train.steps=6", "train.log_every=2", "train.peak_tflops=1.0e-9",
                 "train.telemetry=true")
    start = next(r for r in read_metrics(tmp_path / "run") if r.get("event") == "start")
    assert start["peak_flops"] == pytest.approx(1e3) and start["peak_flops_source"] == "train.peak_tflops"
    for r in loss_records(tmp_path / "run"):
        assert r["mfu"] == pytest.approx(FLOPS_PER_SAMPLE * r["samples_per_s_per_device"] / 1e3, rel=1e-9)
        assert r["samples_per_s_per_device"] == r["samples_per_s"]  # one process


def test_on_a_cpu_the_peak_is_not_guessed(tmp_path):
    run_operated(tmp_path / "run", "train.steps=2", "train.log_every=1", "train.telemetry=true")
    start = next(r for r in read_metrics(tmp_path / "run") if r.get("event") == "start")
    assert start["peak_flops"] is None and "not known on cpu" in start["peak_flops_source"]
    assert all("mfu" not in r for r in loss_records(tmp_path / "run"))


def test_telemetry_off_keeps_samples_per_second_only(tmp_path):
    run_operated(tmp_path / "run", "train.steps=2", "train.log_every=1")  # the test tasks' default: off
    record = loss_records(tmp_path / "run")[-1]
    assert "samples_per_s" in record and "data_wait_s" not in record and "mfu" not in record
