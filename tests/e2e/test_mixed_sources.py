"""Several training sources mixed by weight (`data.train_shards: [{shards, weight, name}]`): draws follow the
weights, each sample is tagged with its source, the stream is a function of the seed, and a run resumed from
a checkpoint draws exactly what the uninterrupted run drew, draw counts included."""
from __future__ import annotations

import functools
import itertools
import math
import shutil
from pathlib import Path

import pytest

from common.data.streams import StreamSource, make_train_loader
from common.datasets.shard_writer import _NoBar, write_split
from common.datasets.sources import Record
from stage2_contrastive.train import main
from tests.support.run_records import assert_same_weights, loss_records, start_records
from tests.common.data.test_streams import _png, identify, ids

WEIGHTS = {"a": 3.0, "b": 1.0}
FIRST_ID = {"a": 0, "b": 100}  # source a's images hold ids 0-39, b's 100-139


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[StreamSource]:
    """Two sources of 4 shards × 10 samples each."""
    root = tmp_path_factory.mktemp("mix")
    out = []
    for name, first in FIRST_ID.items():
        records = [Record(i, functools.partial(_png, first + i), 0) for i in range(40)]
        write_split(records, root / name, "train", 10, _NoBar())
        out.append(StreamSource(name, tuple(sorted(str(p) for p in (root / name).glob("*.tar"))), WEIGHTS[name]))
    return out


def mixed(sources: list[StreamSource], seed: int = 0, batches: int = 16, **kw) -> list[dict]:
    loader = make_train_loader(sources, identify, 50, seed=seed, num_workers=kw.pop("num_workers", 0),
                               shuffle_buffer=16, **kw)
    return list(itertools.islice(iter(loader), batches))


def drawn_from(batches: list[dict]) -> list[str]:
    return [name for batch in batches for name in batch["source"]]


def test_draws_follow_the_weights_within_three_sigma(sources):
    batches = mixed(sources)  # 800 samples: 3σ = 37 draws; equal weights would be 200 off
    names, n = drawn_from(batches), 800
    p = WEIGHTS["a"] / sum(WEIGHTS.values())
    assert abs(names.count("a") - n * p) < 3 * math.sqrt(n * p * (1 - p)), names.count("a")
    assert all((i >= FIRST_ID["b"]) == (name == "b") for i, name in zip(ids(batches), names))  # tags are true


def test_the_mixed_stream_is_a_function_of_the_seed(sources):
    first, again, other = mixed(sources, batches=4), mixed(sources, batches=4), mixed(sources, seed=1, batches=4)
    assert ids(first) == ids(again) and drawn_from(first) == drawn_from(again)
    assert ids(first) != ids(other)
    workers = [mixed(sources, batches=4, num_workers=2) for _ in range(2)]
    assert ids(workers[0]) == ids(workers[1]) and drawn_from(workers[0]) == drawn_from(workers[1])


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
