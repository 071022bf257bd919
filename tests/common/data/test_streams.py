"""common/data/: shard lists, the deterministic training stream, skip counting, the eval stream."""
from __future__ import annotations

import functools
import io
import itertools
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from webdataset import tariterators

from common import stop_signals
from common.data import samples, shard_list, streams
from common.datasets.shard_writer import _NoBar, write_split
from common.datasets.sources import EncodedImage, Record, encode_png
from common.errors import ConfigError

N_SHARDS, PER_SHARD = 4, 10  # sample id i: an 8×8 gray image filled with value i, class i % 3


def _png(i: int) -> EncodedImage:
    return "png", encode_png(Image.fromarray(np.full((8, 8), i, dtype=np.uint8)))


def _garbage() -> EncodedImage:
    return "png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 shards × 10 samples under ROOT/train (+ classnames.txt in ROOT)."""
    root = tmp_path_factory.mktemp("shards")
    records = [Record(i, functools.partial(_png, i), i % 3) for i in range(N_SHARDS * PER_SHARD)]
    write_split(records, root / "train", "train", PER_SHARD, _NoBar())
    (root / "classnames.txt").write_text("a\nb\nc\n")
    return root / "train"


def identify(image: Image.Image, meta: dict) -> dict:
    """map_sample: the sample id, its label, and one draw from torch's RNG (tests augmentation seeding)."""
    return {"id": int(np.asarray(image)[0, 0]), "label": meta["cls"], "noise": torch.rand(2)}


def fail_on_multiples_of_7(image: Image.Image, meta: dict) -> dict:
    out = identify(image, meta)
    if out["id"] % 7 == 0:
        raise ValueError("no multiples of 7")
    return out


def take(loader, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def train_loader(shards: Path, seed: int = 0, **kw) -> object:
    urls = kw.pop("urls", None) or shard_list.resolve_shards(str(shards))
    args = {"rank": 0, "world_size": 1, "num_workers": 0, "shuffle_buffer": 16, "map_sample": identify, **kw}
    return streams.make_train_loader(urls, batch_size=8, seed=seed, **args)


def ids(batches: list[dict]) -> list[int]:
    return [int(i) for b in batches for i in b["id"]]


def test_resolve_shards_folder_brace_and_comma_list(shards):
    urls = shard_list.resolve_shards(str(shards))
    assert [Path(u).name for u in urls] == [f"shard-{i:06d}.tar" for i in range(N_SHARDS)]
    assert shard_list.resolve_shards(f"{shards}/shard-{{000001..000002}}.tar") == urls[1:3]
    assert shard_list.resolve_shards(f"{urls[3]},{shards}/shard-{{000000,000001}}.tar") == [urls[3], *urls[:2]]
    assert shard_list.read_classnames(str(shards)) == ["a", "b", "c"]
    assert sum(shard_list.shard_sizes(urls)) == N_SHARDS * PER_SHARD


def test_resolve_shards_no_match_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards match '.*nothing' — run scripts/make_shards.py"):
        shard_list.resolve_shards(str(tmp_path / "nothing"))


def test_shards_holding_less_than_one_contrastive_batch_are_a_config_error(shards):
    shard_list.require_one_contrastive_batch(str(shards), 40, '20 per process × 2 processes')  # exactly 40 samples
    with pytest.raises(ConfigError, match="fewer than one contrastive batch"):
        shard_list.require_one_contrastive_batch(str(shards), 48, '16 per process × 3 processes')


def test_train_loader_is_deterministic_for_a_seed(shards):
    first, again, other = take(train_loader(shards), 3), take(train_loader(shards), 3), take(train_loader(shards, 1), 3)
    assert ids(first) == ids(again)
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, again))
    assert ids(first) != ids(other)
    assert first[0]["id"].shape == (8,) and first[0]["noise"].shape == (8, 2)
    assert all(int(i) % 3 == int(label) for b in first for i, label in zip(b["id"], b["label"]))


def test_train_loader_ignores_the_callers_global_rng(shards):
    torch.manual_seed(123)
    first = take(train_loader(shards), 2)
    torch.manual_seed(456)
    loader = iter(train_loader(shards))
    torch.rand(5)  # the training step draws numbers between batches
    second = [next(loader), (torch.rand(3), next(loader))[1]]
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, second))


def test_ranks_read_disjoint_shards(shards):
    seen = [set(ids(take(train_loader(shards, rank=r, world_size=2), 10))) for r in range(2)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_truncated_tar_is_skipped_counted_and_training_continues(shards, tmp_path):
    urls = shard_list.resolve_shards(str(shards))
    broken = tmp_path / "truncated.tar"
    raw = Path(urls[0]).read_bytes()
    broken.write_bytes(raw[: len(raw) // 2 + 100])
    batches = take(train_loader(shards, urls=[*urls, str(broken)]), 30)
    assert len(batches) == 30
    assert sum(int(b["skipped"].sum()) for b in batches) > 0


def test_map_sample_errors_are_skipped_and_counted(shards):
    batches = take(train_loader(shards, map_sample=fail_on_multiples_of_7), 10)
    assert not any(i % 7 == 0 for i in ids(batches))
    assert sum(int(b["skipped"].sum()) for b in batches) > 0


def test_two_workers_are_deterministic_and_report_skips(shards, tmp_path):
    urls = shard_list.resolve_shards(str(shards))
    broken = tmp_path / "truncated.tar"
    broken.write_bytes(Path(urls[1]).read_bytes()[:3000])
    kw = {"urls": [*urls, str(broken)], "num_workers": 2, "map_sample": fail_on_multiples_of_7}
    first, again = take(train_loader(shards, **kw), 8), take(train_loader(shards, **kw), 8)
    assert ids(first) == ids(again)
    assert all(torch.equal(a["noise"], b["noise"]) for a, b in zip(first, again))
    assert sum(int(b["skipped"].sum()) for b in first) > 0


def test_one_worker_gives_the_in_process_stream(shards):
    assert ids(take(train_loader(shards, num_workers=1), 3)) == ids(take(train_loader(shards), 3))


def test_eval_skips_are_exact(shards, tmp_path):
    bad = tmp_path / "bad"
    records = [Record(i, functools.partial(_png, i), 0) for i in range(5)]
    records.append(Record(5, _garbage, 0))
    write_split(records, bad, "train", 100, _NoBar())
    urls = [*shard_list.resolve_shards(str(shards)), *shard_list.resolve_shards(str(bad))]
    batches = list(streams.make_eval_loader(urls, fail_on_multiples_of_7, 16))
    emitted = ids(batches)
    assert len(emitted) == 40 - 6 + 5 - 1  # ids 0, 7, …, 35 fail in map; one undecodable image
    assert sum(int(b["skipped"].sum()) for b in batches) == 6 + 1 + 1  # + the bad shard's id 0


@pytest.mark.parametrize("split_by", ["shards", "samples"])
def test_eval_loader_covers_every_sample_once_across_two_ranks(shards, tmp_path, split_by):
    urls = shard_list.resolve_shards(str(shards))
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


def test_eval_loader_workers_decode_the_same_samples_in_parallel(shards):
    urls = shard_list.resolve_shards(str(shards))
    in_process = ids(list(streams.make_eval_loader(urls, identify, 7, rank=1, world_size=2)))
    workers = list(streams.make_eval_loader(urls, identify, 7, rank=1, world_size=2, num_workers=2))
    assert sorted(ids(workers)) == sorted(in_process) and len(ids(workers)) == len(in_process)
    assert ids(workers) != in_process  # really interleaved from two workers, not one reading everything


def test_images_are_decoded_upright_as_their_exif_orientation_says(tmp_path):
    """A camera JPEG kept byte for byte (make_shards does not re-encode): 40×20 stored, orientation 6
    (rotate 90° clockwise to view) → the stream sees it 20×40, as any viewer shows it."""
    from common.data.samples import _decode
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 0, 0)).save(stored, format="JPEG", exif=exif.tobytes())
    assert _decode({"jpg": stored.getvalue()}).size == (20, 40)


# ---- shards that vanish or fail mid-run ----------------------------------------------------------
def six_shards(folder: Path) -> list[str]:
    """6 shards × 10 samples, sample id i in shard i // 10 (what `shard_of` reads back)."""
    records = [Record(i, functools.partial(_png, i), i % 3) for i in range(60)]
    write_split(records, folder, "train", PER_SHARD, _NoBar())
    return shard_list.resolve_shards(str(folder))


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


def test_loader_workers_outlive_a_stop_signal_while_training(shards):
    # SLURM signals every process of a job step: the training process finishes its step and checkpoints
    # (common.train.preemption), so its loader workers must keep serving batches until then
    before = set(psutil.Process().children())
    stream = iter(train_loader(shards, num_workers=1))
    next(stream)
    (worker,) = set(psutil.Process().children()) - before
    stop_signals.shield_loader_workers(True)  # what the training loop does while it runs
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            worker.send_signal(sig)
        assert len(ids([next(stream) for _ in range(4)])) == 32
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    finally:
        stop_signals.shield_loader_workers(False)
    del stream  # shut down as usual


def _worker_that_ignores_stop_signals_while_training(ready) -> None:
    stop_signals.ignore_stop_signals_while_training()
    ready.set()
    time.sleep(60)


def test_after_training_a_worker_stops_on_a_stop_signal_again():
    # else a loader left open at exit could not terminate its workers, and the exit would wait for them
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    worker = fork.Process(target=_worker_that_ignores_stop_signals_while_training, args=(ready,))
    stop_signals.shield_loader_workers(True)
    try:
        worker.start()
        assert ready.wait(timeout=60)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(timeout=1.0)
        assert worker.is_alive()
    finally:
        stop_signals.shield_loader_workers(False)
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGTERM
