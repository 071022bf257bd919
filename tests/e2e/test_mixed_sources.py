"""A stage-2 run on several training sources mixed by weight (`data.train_shards: [{shards, weight, name}]`),
resumed from a checkpoint, draws exactly what the uninterrupted run drew, draw counts per source included.
(The mixed stream itself: tests/common/data/test_streams.py.)"""
from __future__ import annotations

import shutil

import pytest

from stage2_contrastive.train import main
from tests.support.run_records import assert_same_weights, loss_records, start_records


@pytest.mark.slow
def test_a_mixed_run_resumes_exactly_and_counts_draws_per_source(stage2_overrides, fmnist_shards, tmp_path):
    train = fmnist_shards / "train"
    shards = [f"{train}/shard-{i:06d}.tar" for i in range(4)]
    mix = (f"data.train_shards=[{{shards: '{shards[0]},{shards[1]}', weight: 3, name: a}}, "
           f"{{shards: '{shards[2]},{shards[3]}', weight: 1, name: b}}]")
    # logged at steps 3 and 4, saved at 2: the draws of steps 1-2 reach the log only through the checkpoint
    args = ["--config", "configs/stage2/fmnist_tiny.yaml", *stage2_overrides, mix, "train.steps=4",
            "train.save_every=2", "train.log_every=3", "data.eval_max_samples=16", "data.final_eval_max_samples=16"]
    assert main(args) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "run", crashed)  # as if killed after step 2's save
    shutil.rmtree(crashed / "checkpoints" / "step_00000004")
    (crashed / "model.safetensors").unlink()
    assert main([*args, f"train.output_dir={crashed}", "--resume", "auto"]) == 0
    assert [r["step"] for r in start_records(crashed)] == [0, 2]
    reference, resumed = loss_records(tmp_path / "run"), loss_records(crashed)
    assert [(r["step"], r["source_draws"]) for r in resumed] == [(r["step"], r["source_draws"]) for r in reference]
    assert resumed[-1]["loss"] == reference[-1]["loss"]  # step 4's window: the same batch after the resume
    assert_same_weights(crashed, tmp_path / "run")
    draws = [r["source_draws"] for r in reference]
    assert [r["step"] for r in reference] == [3, 4] and [sum(d.values()) for d in draws] == [24, 32]
    assert set(draws[-1]) == {"a", "b"}
