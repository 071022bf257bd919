"""The webdataset pipeline both stages use: shard lists, a resampled deterministic training stream, a
finite exactly-once eval stream, and a handler that skips and counts bad samples.

Training stream (`make_train_loader`), one per (rank, worker) "stream" `s = rank·W + worker` of
`S = world_size·W` streams (W = max(num_workers, 1)):
    shards: stream s owns `urls[s::S]` when there are ≥ S shards, else all shards (independent draws);
            it resamples them with replacement forever (`random.Random(seed_s)`, never time or pid)
    → tar → shuffle buffer (`random.Random`, seeded) → PIL decode → map_sample → batches (in the worker)
All seeds come from `SeedSequence([seed, rank, world_size, worker, W])`. `map_sample` draws from the
stream's own torch and `random` global RNG states (a worker process installs them once; in-process they
are swapped in around each call), so augmentations depend only on that seed: the stream is a pure
function of (seed, rank, world_size, num_workers), num_workers 0 and 1 give the same stream, and the
caller's RNG is never consumed (the DataLoader gets a private generator for its unused base seed).
numpy's legacy global RNG is seeded in workers but not isolated in-process: augment with torch/random.

Bad samples (unreadable tar, missing or undecodable image, a `map_sample` exception) are skipped and
counted; each emitted sample carries `skipped` = skips in its worker since the previous emitted sample,
so `batch["skipped"].sum()` counts every skip exactly once. A truncated tar counts ≥ 1 (one per error
webdataset raises while reading it), not the number of samples lost.
"""
from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import random
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand
from PIL import Image
from webdataset.tariterators import tarfile_samples

log = logging.getLogger("evaclip")

MapSample = Callable[[Image.Image, dict[str, Any]], dict[str, Any]]
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
MAX_CONSECUTIVE_ERRORS = 1000  # map/decode failures in a row → a bug, not bad data: raise


# ---- shard lists ---------------------------------------------------------------------------------
def _split_top_level(spec: str) -> list[str]:
    """Split a comma list, keeping commas inside braces (`a{0,1}.tar,b.tar` → 2 items)."""
    items, depth, current = [], 0, ""
    for char in spec:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def _expand(item: str) -> list[str]:
    if "://" in item or item.startswith("pipe:"):
        return list(braceexpand(item))  # remote: cannot check existence here
    if Path(item).is_dir():
        return sorted(str(p) for p in Path(item).glob("*.tar"))
    found = []
    for name in braceexpand(item):
        found += sorted(glob.glob(name)) if any(c in name for c in "*?[") else [name]
    missing = [name for name in found if not Path(name).is_file()]
    if missing and len(missing) < len(found):
        raise FileNotFoundError(f"{len(missing)} shard(s) of '{item}' do not exist, e.g. {missing[0]}")
    return [] if missing else found


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a folder (its `*.tar`, sorted), a brace pattern, a glob, or a comma list of those."""
    urls = [url for item in _split_top_level(str(spec)) for url in _expand(item)]
    if not urls:
        raise FileNotFoundError(
            f"no shards match '{spec}' — run scripts/make_shards.py --source fashion-mnist|folder:PATH|csv:FILE "
            "--out DIR, or fix data.train_shards / data.eval_shards")
    return urls


def _shard_dirs(spec: str) -> list[Path]:
    first = Path(resolve_shards(spec)[0]).parent
    return [first, first.parent]


def read_classnames(shard_spec: str) -> list[str]:
    """Class names from `classnames.txt` in the shards' folder or its parent; [] when there is none."""
    for folder in _shard_dirs(shard_spec):
        path = folder / "classnames.txt"
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return []


def shard_sizes(urls: list[str]) -> Optional[list[int]]:
    """Samples per shard from each folder's `sizes.json`; None if any shard is not listed."""
    cache: dict[Path, dict[str, int]] = {}
    sizes = []
    for url in urls:
        folder = Path(url).parent
        if folder not in cache:
            try:
                cache[folder] = json.loads((folder / "sizes.json").read_text())
            except (OSError, ValueError):
                cache[folder] = {}
        if Path(url).name not in cache[folder]:
            return None
        sizes.append(int(cache[folder][Path(url).name]))
    return sizes


def dataset_size(shard_spec: str) -> Optional[int]:
    """Total samples from `sizes.json`, or None when unknown."""
    sizes = shard_sizes(resolve_shards(shard_spec))
    return None if sizes is None else sum(sizes)


def _require_one_batch(size: Optional[int], where: str, batch_size: int, world_size: int) -> None:
    need = batch_size * world_size
    if size is not None and size < need:
        raise ValueError(f"{where} holds {size} samples, fewer than one global batch "
                         f"({batch_size} per process × {world_size} processes = {need}) — lower "
                         "train.batch_size or write more data with scripts/make_shards.py")


def check_enough_data(spec: str, batch_size: int, world_size: int) -> Optional[int]:
    """Raise ValueError when the shards hold fewer samples than one global batch; returns the size
    (None, and no check, when sizes.json does not list every shard)."""
    size = dataset_size(spec)
    _require_one_batch(size, f"'{spec}'", batch_size, world_size)
    return size


# ---- skipping bad samples ------------------------------------------------------------------------
class SkipCounter:
    """A webdataset exception handler (returns True: continue) that counts skips and logs the shard
    once per (error kind, shard)."""

    def __init__(self, urls: Iterable[str] = ()):
        self.urls = list(urls)
        self.pending, self.total, self.read = 0, 0, 0
        self._logged: set[tuple[str, str]] = set()

    def _url_of(self, exn: BaseException) -> str:
        text = " ".join(str(arg) for arg in exn.args)
        return next((url for url in self.urls if url in text), "?")

    def __call__(self, exn: Exception) -> bool:
        self.record(exn, self._url_of(exn))
        return True

    def record(self, exn: BaseException, url: str) -> None:
        self.pending += 1
        self.total += 1
        kind = type(exn).__name__
        if (kind, url) not in self._logged:
            self._logged.add((kind, url))
            log.warning("skipping bad sample(s) in %s — %s: %s (logged once per error kind and shard)",
                        url, kind, str(exn)[:300])

    def take(self) -> int:
        """Skips since the last call."""
        pending, self.pending = self.pending, 0
        return pending


class _PrivateRNG:
    """Global torch and `random` RNG states of one stream. In-process (num_workers=0) they are swapped
    in around each `map_sample` call (~30 µs); a worker process owns its globals, so `install()` sets
    them once (and seeds numpy's legacy global RNG, which is not swapped in-process: it costs ~150 µs)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.state = (torch.Generator().manual_seed(seed).get_state(), random.Random(seed).getstate())
        self.outer: Any = None

    def install(self) -> None:
        torch.set_rng_state(self.state[0])
        random.setstate(self.state[1])
        np.random.seed(self.seed % 2**32)

    def __enter__(self) -> None:
        self.outer = (torch.get_rng_state(), random.getstate())
        torch.set_rng_state(self.state[0])
        random.setstate(self.state[1])

    def __exit__(self, *exc: Any) -> None:
        self.state = (torch.get_rng_state(), random.getstate())
        torch.set_rng_state(self.outer[0])
        random.setstate(self.outer[1])


# ---- sample stages -------------------------------------------------------------------------------
def _decode(sample: dict[str, Any]) -> Image.Image:
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image ({'/'.join(IMAGE_KEYS)})")
    image = Image.open(io.BytesIO(sample[key]))
    image.load()  # decode now: truncated data raises here
    return image


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    cls, txt = sample.get("cls"), sample.get("txt")
    return {"cls": int(cls) if cls is not None else None,
            "txt": txt.decode("utf-8") if txt is not None else None,
            "key": sample.get("__key__", "?"), "url": sample.get("__url__", "?")}


def decode_and_map(samples: Iterable[dict[str, Any]], map_sample: MapSample, counter: SkipCounter,
                   rng: Optional[_PrivateRNG] = None) -> Iterator[dict[str, Any]]:
    """Raw tar samples → `map_sample(image, meta)` outputs, each with an int `skipped`."""
    failures, held = 0, None
    for sample in samples:
        try:
            meta = _meta(sample)
            if "index" in sample:
                meta["index"] = sample["index"]
            image = _decode(sample)
            if rng is None:
                out = dict(map_sample(image, meta))
            else:
                with rng:
                    out = dict(map_sample(image, meta))
        except Exception as exn:  # any bad sample or map error: skip and count
            counter.record(exn, sample.get("__url__", "?"))
            failures += 1
            if failures >= MAX_CONSECUTIVE_ERRORS:
                raise RuntimeError(f"{failures} samples in a row failed to decode or map — last error: "
                                   f"{type(exn).__name__}: {exn}") from exn
            continue
        failures = 0
        out["skipped"] = counter.take()
        if held is not None:
            yield held
        held = out  # one sample of lookahead: skips after the last sample of a finite stream land on it
    if held is not None:
        held["skipped"] += counter.take()
        yield held


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors/arrays, turn numbers into a tensor, keep anything else (str, None) as a list."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(values[0], np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(values[0], (bool, int, float, np.number)):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    return batch


def _batches(samples: Iterable[dict[str, Any]], batch_size: int, partial: bool) -> Iterator[dict[str, Any]]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)


# ---- training stream -----------------------------------------------------------------------------
def _resampled(shards: list[str], rng: random.Random, counter: SkipCounter) -> Iterator[dict[str, str]]:
    """Shards drawn with replacement forever; raises if many draws in a row give no sample at all."""
    empty_run, last_read = 0, -1
    limit = max(20, 3 * len(shards))
    while True:
        empty_run = empty_run + 1 if counter.read == last_read else 0
        if empty_run >= limit:
            raise RuntimeError(f"{limit} shards in a row gave no readable sample — check {shards[:3]} …")
        last_read = counter.read
        yield {"url": rng.choice(shards)}


def _count_reads(samples: Iterable[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    for sample in samples:
        counter.read += 1
        yield sample


class TrainStream(torch.utils.data.IterableDataset):
    """Infinite batches of one (rank, worker) stream; see the module docstring."""

    def __init__(self, urls: list[str], map_sample: MapSample, batch_size: int, seed: int, rank: int,
                 world_size: int, shuffle_buffer: int):
        super().__init__()
        self.urls, self.map_sample, self.batch_size = list(urls), map_sample, batch_size
        self.seed, self.rank, self.world_size, self.shuffle_buffer = seed, rank, world_size, shuffle_buffer

    def stream(self) -> tuple[int, int, list[int]]:
        """(stream index, number of streams, 3 seeds) of the calling worker."""
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        entropy = [self.seed % 2**64, self.rank, self.world_size, worker, workers]
        seeds = np.random.SeedSequence(entropy).generate_state(3).tolist()
        return self.rank * workers + worker, self.world_size * workers, seeds

    def __iter__(self) -> Iterator[dict[str, Any]]:
        index, total, (shard_seed, shuffle_seed, rng_seed) = self.stream()
        shards = self.urls[index::total] if len(self.urls) >= total else self.urls
        counter = SkipCounter(shards)
        samples = tarfile_samples(_resampled(shards, random.Random(shard_seed), counter), handler=counter)
        samples = _count_reads(samples, counter)
        if self.shuffle_buffer > 1:
            samples = wds.filters.shuffle(self.shuffle_buffer, self.shuffle_buffer,
                                          rng=random.Random(shuffle_seed))(samples)
        rng = _PrivateRNG(rng_seed)
        if torch.utils.data.get_worker_info() is not None:
            rng.install()  # this process's globals are the stream's own: no per-sample swap needed
            rng = None
        mapped = decode_and_map(samples, self.map_sample, counter, rng)
        return _batches(mapped, self.batch_size, partial=False)


def make_train_loader(urls: list[str], map_sample: MapSample, batch_size: int, *, seed: int, rank: int = 0,
                      world_size: int = 1, num_workers: int = 1, shuffle_buffer: int = 1000,
                      persistent_workers: bool = False) -> Iterable[dict[str, Any]]:
    """Infinite collated batches (`batch_size` per rank) + `skipped` `[B] int64`; deterministic in
    (seed, rank, world_size, num_workers). `map_sample(image, meta)` gets meta {cls, txt, key, url}.
    Raises ValueError up front when sizes.json shows fewer samples than one global batch."""
    if not urls:
        raise FileNotFoundError("make_train_loader got no shards — check data.train_shards")
    sizes = shard_sizes(urls)
    _require_one_batch(None if sizes is None else sum(sizes), f"the {len(urls)} training shard(s) "
                       f"({urls[0]} …)", batch_size, world_size)
    dataset = TrainStream(urls, map_sample, batch_size, seed, rank, world_size, shuffle_buffer)
    generator = torch.Generator().manual_seed(seed % 2**63)  # DataLoader draws a base seed: not from ours
    return wds.WebLoader(dataset, batch_size=None, num_workers=num_workers, generator=generator,
                         persistent_workers=persistent_workers and num_workers > 0)


# ---- eval stream ---------------------------------------------------------------------------------
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
        mapped = decode_and_map(raw, self.map_sample, counter)
        return _batches(mapped, self.batch_size, partial=True)


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
