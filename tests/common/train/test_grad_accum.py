"""`train.grad_accum`: K micro-batches of B samples and one optimizer step equal one step on a batch of
K·B (the engine, in-process, on tests/tasks/stream_task.py whose micro-batches partition the big batch):
same logged loss and gradient norm every step, same final weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.train.engine import train
from tests.support.tasks.stream_task import StreamConfig, StreamTask

ACCUM, MICRO_BATCH = 4, 4


def run(tmp_path, grad_accum: int, batch_size: int, *overrides: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """(the step records of metrics.jsonl, the final weights) of a 4-step run."""
    out = tmp_path / f"accum{grad_accum}_batch{batch_size}"
    cfg = load_config(StreamConfig, None, [f"train.output_dir={out}", f"train.grad_accum={grad_accum}",
                                           f"train.batch_size={batch_size}", *overrides])
    train(cfg, lambda run: StreamTask(cfg, run))
    return [r for r in read_metrics(out) if "loss" in r], load_file(str(out / "model.safetensors"))


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    accumulated, accumulated_weights = run(tmp_path, ACCUM, MICRO_BATCH)
    big, big_weights = run(tmp_path, 1, ACCUM * MICRO_BATCH)
    assert [r["step"] for r in accumulated] == [r["step"] for r in big] == [1, 2, 3, 4]
    for name in ("loss", "grad_norm"):  # grad_norm: scale-sensitive, unlike Adam's update
        assert [r[name] for r in accumulated] == pytest.approx([r[name] for r in big], rel=1e-5), name
    assert accumulated_weights.keys() == big_weights.keys()
    for key, value in big_weights.items():
        torch.testing.assert_close(accumulated_weights[key], value, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def big_batch_run_skipping_step_2(tmp_path_factory) -> tuple[list[dict], dict[str, torch.Tensor]]:
    return run(tmp_path_factory.mktemp("big"), 1, ACCUM * MICRO_BATCH, "nan_at_calls=[2]")


@pytest.mark.parametrize("nan_micro_batch", [pytest.param(1, marks=pytest.mark.slow), 3,
                                             pytest.param(ACCUM, marks=pytest.mark.slow)])
def test_a_skipped_step_discards_its_whole_accumulation_group(tmp_path, big_batch_run_skipping_step_2,
                                                              nan_micro_batch):
    """A NaN loss on micro-batch m (first, middle, last) of step 2 (of K = ACCUM) skips step 2 as a whole:
    the run equals the big-batch run with step 2 skipped (same records, weights), so no micro-batch leaks
    into step 3 and the stream and accelerate's accumulation counter stay in step."""
    nan_call = ACCUM + nan_micro_batch  # micro-batches 1..K are step 1
    accumulated, accumulated_weights = run(tmp_path, ACCUM, MICRO_BATCH, f"nan_at_calls=[{nan_call}]")
    big, big_weights = big_batch_run_skipping_step_2
    assert [r["bad_steps"] for r in accumulated] == [r["bad_steps"] for r in big] == [0, 1, 1, 1]
    for name in ("loss", "grad_norm"):
        assert [r[name] for r in accumulated] == pytest.approx([r[name] for r in big], rel=1e-5, nan_ok=True)
    for key, value in big_weights.items():
        torch.testing.assert_close(accumulated_weights[key], value, rtol=1e-5, atol=1e-6)
