"""common/data/streams.py: the deterministic training stream (seeded, rank-disjoint, loader workers), skipped
and counted bad samples, shards that vanish mid-run, the eval stream split across ranks, and several
training sources mixed by weight."""
from __future__ import annotations

import itertools
import math
import shutil
from pathlib import Path

import pytest
import torch
from webdataset import tariterators

from common.data import shard_list, streams
from common.data.streams import StreamSource, make_train_loader
from common.datasets.shard_writer import NoBar, write_split
from common.datasets.sources import Record
from tests.support.shards import (N_SHARDS, PER_SHARD, fail_on_multiples_of_7, garbage_png, id_records, identify, ids,
                                  take, train_loader, write_id_shards)


def test_train_loader_is_deterministic_for_a_seed(id_shards):
    first, again = take(train_loader(id_shards), 3), take(train_loader(id_shards), 3)
    other = take(train_loader(id_shards, 1), 3)
    assert ids(first) == ids(again)
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, again))
    assert ids(first) != ids(other)
    assert first[0]["id"].shape == (8,) and first[0]["noise"].shape == (8, 2)
    assert all(int(i) % 3 == int(label) for b in first for i, label in zip(b["id"], b["label"]))


def test_train_loader_ignores_the_callers_global_rng(id_shards):
    torch.manual_seed(123)
    first = take(train_loader(id_shards), 2)
    torch.manual_seed(456)
    loader = iter(train_loader(id_shards))
    torch.rand(5)  # the training step draws numbers between batches
    second = [next(loader), (torch.rand(3), next(loader))[1]]
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, second))


def test_ranks_read_disjoint_shards(id_shards):
    seen = [set(ids(take(train_loader(id_shards, rank=r, world_size=2), 10))) for r in range(2)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_truncated_tar_is_skipped_counted_and_training_continues(id_shards, tmp_path):
    urls = shard_list.resolve_shards(str(id_shards))
    broken = tmp_path / "truncated.tar"
    raw = Path(urls[0]).read_bytes()
    broken.write_bytes(raw[: len(raw) // 2 + 100])
    batches = take(train_loader(id_shards, urls=[*urls, str(broken)]), 30)
    assert len(batches) == 30
    assert sum(int(b["skipped"].sum()) for b in batches) > 0


def test_map_sample_errors_are_skipped_and_counted(id_shards):
    batches = take(train_loader(id_shards, map_sample=fail_on_multiples_of_7), 10)
    assert not any(i % 7 == 0 for i in ids(batches))
    assert sum(int(b["skipped"].sum()) for b in batches) > 0


def test_two_workers_are_deterministic_and_report_skips(id_shards, tmp_path):
    urls = shard_list.resolve_shards(str(id_shards))
    broken = tmp_path / "truncated.tar"
    broken.write_bytes(Path(urls[1]).read_bytes()[:3000])
    kw = {"urls": [*urls, str(broken)], "num_workers": 2, "map_sample": fail_on_multiples_of_7}
    first, again = take(train_loader(id_shards, **kw), 8), take(train_loader(id_shards, **kw), 8)
    assert ids(first) == ids(again)
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, again))
    assert sum(int(b["skipped"].sum()) for b in first) > 0


def test_one_worker_gives_the_in_process_stream(id_shards):
    assert ids(take(train_loader(id_shards, num_workers=1), 3)) == ids(take(train_loader(id_shards), 3))


def test_eval_skips_are_exact(id_shards, tmp_path):
    bad = tmp_path / "bad"
    records = id_records(range(5), label=lambda i: 0)
    records.append(Record(5, garbage_png, 0))
    write_split(records, bad, "train", 100, NoBar())
    urls = [*shard_list.resolve_shards(str(id_shards)), *shard_list.resolve_shards(str(bad))]
    batches = list(streams.make_eval_loader(urls, fail_on_multiples_of_7, 16))
    emitted = ids(batches)
    assert len(emitted) == 40 - 6 + 5 - 1  # ids 0, 7, …, 35 fail in map; one undecodable image
    assert sum(int(b["skipped"].sum()) for b in batches) == 6 + 1 + 1  # + the bad shard's id 0


@pytest.mark.parametrize("split_by", ["shards", "samples"])
def test_eval_loader_covers_every_sample_once_across_two_ranks(id_shards, tmp_path, split_by):
    urls = shard_list.resolve_shards(str(id_shards))
    if split_by == "samples":  # no sizes.json → split by sample index
        for url in urls:
            shutil.copy(url, tmp_path)
        urls = shard_list.resolve_shards(str(tmp_path))
    per_rank = [list(streams.make_eval_loader(urls, identify, 7, rank=r, world_size=2)) for r in range(2)]
    all_ids = [i for batches in per_rank for i in ids(batches)]
    assert sorted(all_ids) == list(range(N_SHARDS * PER_SHARD))
    assert ids(per_rank[0]) == ids(list(streams.make_eval_loader(urls, identify, 7, rank=0, world_size=2)))
    assert any(len(b["id"]) < 7 for b in per_rank[0])  # last partial batch kept
    first_ten = list(streams.make_eval_loader(urls, identify, 4, rank=0, world_size=1, max_samples=10))
    assert len(ids(first_ten)) == 10


def test_eval_loader_workers_decode_the_same_samples_in_parallel(id_shards):
    urls = shard_list.resolve_shards(str(id_shards))
    in_process = ids(list(streams.make_eval_loader(urls, identify, 7, rank=1, world_size=2)))
    workers = list(streams.make_eval_loader(urls, identify, 7, rank=1, world_size=2, num_workers=2))
    assert sorted(ids(workers)) == sorted(in_process) and len(ids(workers)) == len(in_process)
    assert ids(workers) != in_process  # really interleaved from two workers, not one reading everything


# ---- shards that vanish or fail mid-run ----------------------------------------------------------
def six_shards(folder: Path) -> list[str]:
    """6 shards × 10 samples, sample id i in shard i // 10 (what `shard_of` reads back)."""
    return write_id_shards(folder, 60)


def shard_of(sample_id: int) -> int:
    return sample_id // PER_SHARD


def test_shards_that_vanish_mid_run_are_skipped_and_the_others_keep_their_order(tmp_path, monkeypatch):
    urls = six_shards(tmp_path / "shards")
    kw = {"urls": urls, "shuffle_buffer": 0}  # samples leave in draw order: the order of each shard is visible
    reference = ids(take(train_loader(tmp_path, **kw), 60))
    draws = [shard_of(i) for i in reference[::PER_SHARD]]
    assert all(shard_of(i) == draws[k // PER_SHARD] for k, i in enumerate(reference))  # whole shards, in turn
    stream = iter(train_loader(tmp_path, **kw))
    before = ids([next(stream) for _ in range(5)])  # 4 whole draws; the 5th shard is open (read ahead)
    deleted, denied, truncated = [s for s in dict.fromkeys(draws[5:]) if s != draws[4]][:3]
    Path(urls[deleted]).unlink()
    raw = Path(urls[truncated]).read_bytes()
    Path(urls[truncated]).write_bytes(raw[: len(raw) // 2])  # cut mid-member, as a network mount might
    real_gopen = tariterators.gopen.gopen  # the module webdataset opens shards with

    def gopen(url, *args, **kwargs):  # the tests may run as root, who may read any file: inject EACCES
        if url == urls[denied]:
            raise PermissionError(13, "Permission denied", url)
        return real_gopen(url, *args, **kwargs)

    monkeypatch.setattr(tariterators.gopen, "gopen", gopen)
    after_batches = [next(stream) for _ in range(15)]
    after = ids(after_batches)
    assert before == reference[:40]
    intact = lambda i: shard_of(i) not in (deleted, denied, truncated)  # noqa: E731
    kept = [i for i in after if intact(i)]
    assert kept == [i for i in reference[40:] if intact(i)][: len(kept)] and len(kept) > 60
    assert not [i for i in after if shard_of(i) in (deleted, denied)]
    cut_ids = [i for i in after if shard_of(i) == truncated]
    assert set(cut_ids) < set(range(truncated * PER_SHARD, (truncated + 1) * PER_SHARD))  # a prefix at most
    assert sum(int(b["skipped"].sum()) for b in after_batches) >= sum(s in (deleted, denied) for s in draws[5:9])


def test_a_rank_with_no_readable_shard_left_stops_with_one_line_naming_them(tmp_path):
    urls = six_shards(tmp_path / "shards")
    stream = iter(train_loader(tmp_path, urls=urls, num_workers=1))  # the error crosses the worker boundary
    next(stream)
    for url in urls:
        Path(url).unlink()
    with pytest.raises(streams.NoReadableShardError) as stopped:
        for _ in range(100):
            next(stream)
    message = str(stopped.value)
    assert "\n" not in message and message.startswith("rank 0, loader worker 0: no readable shard left")
    assert all(url in message for url in urls)


# ---- several sources mixed by weight (`data.train_shards: [{shards, weight, name}]`) -----------------
WEIGHTS = {"a": 3.0, "b": 1.0}
FIRST_ID = {"a": 0, "b": 100}  # source a's images hold ids 0-39, b's 100-139


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[StreamSource]:
    """Two sources of 4 shards × 10 samples each."""
    root = tmp_path_factory.mktemp("mix")
    out = []
    for name, first in FIRST_ID.items():
        urls = write_id_shards(root / name, 40, first_id=first)
        out.append(StreamSource(name, tuple(urls), WEIGHTS[name]))
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
