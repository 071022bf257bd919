"""The webdataset streams both stages use: a resampled deterministic training stream, optionally mixed
from several weighted sources, and a finite exactly-once eval stream.

Training stream (`make_train_loader`), one per (rank, worker) "stream" `s = rank·W + worker` of
`S = world_size·W` streams (W = max(num_workers, 1)):
    per source: shards: stream s owns `urls[s::S]` when the source has ≥ S shards, else all of them
            (independent draws); it resamples them with replacement forever (`random.Random(seed)`, never
            time or pid) → tar samples
    → with ≥ 2 sources: each next sample comes from source i with probability w_i / Σ w (a seeded
            `random.Random`), tagged `source` = the source's name
    → shuffle buffer (`random.Random`, seeded) → PIL decode → map_sample → batches (in the worker)
All seeds come from `SeedSequence([seed, rank, world_size, worker, W])`. `map_sample` draws from the
stream's own torch and `random` global RNG states (a worker process installs them once; in-process they
are swapped in around each call), so augmentations depend only on that seed: the stream is a pure
function of (seed, rank, world_size, num_workers), num_workers 0 and 1 give the same stream, and the
caller's RNG is never consumed (the DataLoader gets a private generator for its unused base seed).
numpy's legacy global RNG is seeded in workers but not isolated in-process: augment with torch/random.
One source gives exactly the stream of a plain shard list (the mixer draws nothing).

Bad samples are skipped and counted (`common.data.samples`), and so are shards that vanish or fail
mid-run (deleted, permission denied, truncated on a network mount): a draw of such a shard counts one
skip (more for a shard truncated mid-read) and the draw sequence is unchanged, so the stream stays a
pure function of its seed for the shards that remain. When none of a stream's shards gives a sample
any more, `NoReadableShardError` (one line naming them) is raised in the training process, also when
the stream runs in a loader worker.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence, Union

import numpy as np
import torch
import webdataset as wds
from webdataset.tariterators import tarfile_samples

from common.data.samples import MapSample, PrivateRNG, SkipCounter, batches, decode_and_map
from common.data.shard_list import shard_sizes
from common.errors import RunFault
from common.stop_signals import ignore_stop_signals_while_training

ERROR_KEY = "__no_readable_shard__"


class NoReadableShardError(RunFault):
    """None of the shards of a training stream gives a sample; the message is one line naming them."""


def _shard_list(shards: list[str], shown: int = 10) -> str:
    names = ", ".join(shards[:shown])
    return names if len(shards) <= shown else f"{names} and {len(shards) - shown} more"


@dataclass(frozen=True)
class StreamSource:
    """One training source: its shard urls, its sampling weight (> 0) and the name its draws are logged by."""
    name: str
    urls: tuple[str, ...]
    weight: float = 1.0


class _Reads:
    """Samples read so far from one source's tars (`_resampled` watches it for shards that yield nothing)."""
    read = 0


def _resampled(shards: list[str], rng: random.Random, reads: _Reads, where: str) -> Iterator[dict[str, str]]:
    """Shards drawn with replacement forever; `NoReadableShardError` if many draws in a row give no sample."""
    empty_run, last_read = 0, -1
    limit = max(20, 3 * len(shards))
    while True:
        empty_run = empty_run + 1 if reads.read == last_read else 0
        if empty_run >= limit:
            raise NoReadableShardError(f"{where}: no readable shard left — {limit} draws in a row from its "
                                       f"{len(shards)} shards ({_shard_list(shards)}) gave no sample (deleted, "
                                       "unreadable or truncated?); check data.train_shards and the storage")
        last_read = reads.read
        yield {"url": rng.choice(shards)}


def _count_reads(samples: Iterable[dict[str, Any]], reads: _Reads) -> Iterator[dict[str, Any]]:
    for sample in samples:
        reads.read += 1
        yield sample


def _mixed(sources: list[Iterator[dict[str, Any]]], weights: Sequence[float], names: Sequence[str],
           rng: random.Random, chunk: int = 256) -> Iterator[dict[str, Any]]:
    """Endless samples: each from source i with probability weights[i] / Σ weights, tagged `source`."""
    population = range(len(sources))
    while True:
        for i in rng.choices(population, weights=weights, k=chunk):
            yield {**next(sources[i]), "source": names[i]}


def as_sources(shards: Union[Sequence[str], Sequence[StreamSource]]) -> list[StreamSource]:
    """A plain shard list is one source ("0") of weight 1; a list of sources is kept."""
    if shards and all(isinstance(s, StreamSource) for s in shards):
        return list(shards)
    return [StreamSource("0", tuple(shards))]


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite batches of one (rank, worker) stream; see the module docstring."""

    def __init__(self, sources: list[StreamSource], map_sample: MapSample, batch_size: int, seed: int, rank: int,
                 world_size: int, shuffle_buffer: int):
        super().__init__()
        self.sources, self.map_sample, self.batch_size = list(sources), map_sample, batch_size
        self.seed, self.rank, self.world_size, self.shuffle_buffer = seed, rank, world_size, shuffle_buffer

    def stream(self) -> tuple[int, int, list[int]]:
        """(stream index, number of streams, seeds) of the calling worker: shard, shuffle and map seeds,
        then one shard seed per further source, then the mixer's seed."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        entropy = [self.seed % 2**64, self.rank, self.world_size, worker, workers]
        seeds = np.random.SeedSequence(entropy).generate_state(3 + len(self.sources)).tolist()
        return self.rank * workers + worker, self.world_size * workers, seeds

    def _source_samples(self, source: StreamSource, index: int, total: int, seed: int, counter: SkipCounter,
                        where: str) -> Iterator[dict[str, Any]]:
        """Raw tar samples of this stream's shards of `source`, resampled forever."""
        urls = list(source.urls)
        shards = urls[index::total] if len(urls) >= total else urls
        reads = _Reads()
        label = where if len(self.sources) == 1 else f"{where}, source {source.name}"
        draws = _resampled(shards, random.Random(seed), reads, label)
        return _count_reads(tarfile_samples(draws, handler=counter), reads)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This stream's batches; a `NoReadableShardError` travels as the last item (`ERROR_KEY`), which
        `make_train_loader` raises in the training process (a loader worker's exception would arrive there
        wrapped in its traceback)."""
        try:
            yield from self._batches()
        except NoReadableShardError as err:
            yield {ERROR_KEY: str(err)}

    def _batches(self) -> Iterator[dict[str, Any]]:
        index, total, (shard_seed, shuffle_seed, rng_seed, *more_seeds) = self.stream()
        info = torch.utils.data.get_worker_info()
        where = f"rank {self.rank}" + (f", loader worker {info.id}" if info is not None else "")
        counter = SkipCounter([url for source in self.sources for url in source.urls])
        shard_seeds = [shard_seed, *more_seeds[:len(self.sources) - 1]]
        raw = [self._source_samples(source, index, total, seed, counter, where)
               for source, seed in zip(self.sources, shard_seeds)]
        samples = raw[0] if len(raw) == 1 else _mixed(raw, [s.weight for s in self.sources],
                                                      [s.name for s in self.sources], random.Random(more_seeds[-1]))
        if self.shuffle_buffer > 1:
            samples = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                          rng=random.Random(shuffle_seed))(samples)
        rng = PrivateRNG(rng_seed)
        if torch.utils.data.get_worker_info() is not None:
            rng.install()  # this process's globals are the stream's own: no per-sample swap needed
            rng = None
            ignore_stop_signals_while_training()
        mapped = decode_and_map(samples, self.map_sample, counter, rng)
        yield from batches(mapped, self.batch_size, partial=False)


def _raising_errors(loader: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for batch in loader:
        if ERROR_KEY in batch:
            raise NoReadableShardError(batch[ERROR_KEY])
        yield batch


def make_train_loader(shards: Union[Sequence[str], Sequence[StreamSource]], map_sample: MapSample,
                      batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1, num_workers: int = 1,
                      shuffle_buffer: int = 1000, persistent_workers: bool = False) -> Iterable[dict[str, Any]]:
    """Infinite collated batches (`batch_size` per rank) + `skipped` `[B] int64` (+ `source`, the names of
    the samples' sources, with ≥ 2 sources); deterministic in (seed, rank, world_size, num_workers).
    `shards`: shard urls (one source) or `StreamSource`s. `map_sample(image, meta)` gets meta {cls, txt,
    captions, key, url, source}. (That the shards hold one contrastive batch is checked at start-up:
    `shard_list.require_one_contrastive_batch`.)"""
    sources = as_sources(shards)
    if not any(source.urls for source in sources):
        raise FileNotFoundError("make_train_loader got no shards — check data.train_shards")
    dataset = TrainStream(sources, map_sample, batch_size, seed, rank, world_size, shuffle_buffer)
    generator = torch.Generator().manual_seed(seed % 2**63)  # DataLoader draws a base seed: not from ours
    loader = wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, generator=generator,
                           persistent_workers=persistent_workers and num_workers > 0)
    return _raising_errors(loader)


class EvalStream(torch.utils.data.IterableDataset):
    """Re-iterable finite batches; every sample once across ranks (and loader workers), in a fixed
    order (see make_eval_loader)."""

    def __init__(self, urls: list[str], map_sample: MapSample, batch_size: int, rank: int, world_size: int,
                 max_samples: int):
        self.urls, self.map_sample, self.batch_size = list(urls), map_sample, batch_size
        self.rank, self.world_size, self.max_samples = rank, world_size, max_samples
        sizes = shard_sizes(self.urls)
        self.offsets = None if sizes is None else [0, *itertools.accumulate(sizes)][:-1]
        self.split_shards = self.offsets is not None and len(self.urls) >= world_size

    def _indexed(self, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        """Raw samples of this rank with `index` = position in the global (sorted-shard) order."""
        limit = self.max_samples if self.max_samples > 0 else float("inf")
        if self.split_shards:
            mine = [(url, off) for url, off in zip(self.urls, self.offsets)][self.rank::self.world_size]
            for url, offset in mine:
                if offset >= limit:
                    continue
                for i, sample in enumerate(tarfile_samples([{"url": url}], handler=counter)):
                    if offset + i < limit:
                        yield {**sample, "index": offset + i}
            return
        stream = tarfile_samples(({"url": url} for url in self.urls), handler=counter)
        for index, sample in enumerate(stream):
            if index >= limit:
                return
            if index % self.world_size == self.rank:
                yield {**sample, "index": index}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        counter = SkipCounter(self.urls)
        raw = self._indexed(counter)
        worker = torch.utils.data.get_worker_info()
        if worker is not None:  # worker w decodes the rank's samples w, w+n, …; reading tar bytes is cheap
            raw = itertools.islice(raw, worker.id, None, worker.num_workers)
            ignore_stop_signals_while_training()
        mapped = decode_and_map(raw, self.map_sample, counter)
        return batches(mapped, self.batch_size, partial=True)


def make_eval_loader(urls: list[str], map_sample: MapSample, batch_size: int, rank: int = 0,
                     world_size: int = 1, *, max_samples: int = 0, num_workers: int = 0) -> Iterable[dict[str, Any]]:
    """Finite batches in a fixed order, each sample on exactly one rank, last partial batch kept.

    With ≥ world_size shards all listed in sizes.json, rank r reads shards r, r+W, …; otherwise every
    rank reads every shard and keeps samples whose index % world_size == r. meta gets `index` (the
    sample's position in the global order, the same for any world size); `max_samples` > 0 keeps the
    first max_samples of that order. `num_workers` > 0 decodes in loader processes, which split the
    rank's samples round-robin (batches then interleave by worker; the set of samples is the same)."""
    stream = EvalStream(urls, map_sample, batch_size, rank, world_size, max_samples)
    if num_workers == 0:
        return stream
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=num_workers)
