"""Sample stages of both streams: decode a raw tar sample, map it (augment, tokenize), skip and count
bad samples, collate batches.

A sample holds an image (`png`, `jpg`, `jpeg` or `webp`: the formats make_shards and img2dataset write,
decoded as stored, EXIF orientation applied) and a class label `cls` and/or a caption `txt`; a `txt` of
several lines holds several captions of the image (clip_benchmark's convention), and other keys (e.g.
img2dataset's `json`) are ignored.

Bad samples (unreadable tar, missing or undecodable image, a `map_sample` exception) are skipped and
counted; each emitted sample carries `skipped` = skips in its worker since the previous emitted sample,
so `batch["skipped"].sum()` counts every skip exactly once. A truncated tar counts ≥ 1 (one per error
webdataset raises while reading it), not the number of samples lost.
"""
from __future__ import annotations

import io
import logging
import random
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from PIL import Image, ImageOps

log = logging.getLogger("evaclip")

MapSample = Callable[[Image.Image, dict[str, Any]], dict[str, Any]]
IMAGE_KEYS = ("png", "jpg", "jpeg", "webp")
MAX_CONSECUTIVE_ERRORS = 1000  # map/decode failures in a row → a bug, not bad data: raise
ORIENTATION_TAG = 0x0112  # EXIF orientation


class SkipCounter:
    """A webdataset exception handler (returns True: continue) that counts skips and logs the shard
    once per (error kind, shard)."""

    def __init__(self, urls: Iterable[str] = ()):
        self.urls = list(urls)
        self.pending, self.total = 0, 0
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


class PrivateRNG:
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


def decode_image(sample: dict[str, Any]) -> Image.Image:
    """The image of a raw tar sample (its png, jpg, jpeg or webp bytes), decoded now (truncated data raises
    here) and turned upright as its EXIF orientation says."""
    key = next((k for k in IMAGE_KEYS if k in sample), None)
    if key is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image ({'/'.join(IMAGE_KEYS)})")
    image = Image.open(io.BytesIO(sample[key]))
    image.load()  # decode now: truncated data raises here
    if image.getexif().get(ORIENTATION_TAG, 1) != 1:  # kept camera JPEGs: upright, as a viewer shows them
        image = ImageOps.exif_transpose(image)
    return image


def _meta(sample: dict[str, Any]) -> dict[str, Any]:
    """{cls, txt (the first caption), captions (every line of txt), key, url, source}."""
    cls, txt = sample.get("cls"), sample.get("txt")
    captions = [line.strip() for line in txt.decode("utf-8").splitlines() if line.strip()] if txt else []
    return {"cls": int(cls) if cls is not None else None, "txt": captions[0] if captions else None,
            "captions": captions, "key": sample.get("__key__", "?"), "url": sample.get("__url__", "?"),
            "source": sample.get("source")}


def decode_and_map(samples: Iterable[dict[str, Any]], map_sample: MapSample, counter: SkipCounter,
                   rng: Optional[PrivateRNG] = None) -> Iterator[dict[str, Any]]:
    """Raw tar samples → `map_sample(image, meta)` outputs, each with an int `skipped`."""
    failures, held = 0, None
    for sample in samples:
        try:
            meta = _meta(sample)
            if "index" in sample:
                meta["index"] = sample["index"]
            image = decode_image(sample)
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
        if meta["source"] is not None:
            out["source"] = meta["source"]
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


def batches(samples: Iterable[dict[str, Any]], batch_size: int, partial: bool) -> Iterator[dict[str, Any]]:
    batch = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == batch_size:
            yield collate(batch)
            batch = []
    if batch and partial:
        yield collate(batch)
