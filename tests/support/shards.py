"""Shards the tests write and read: a webdataset tar from (name, bytes) members, img2dataset's output
layout, and the id-image shards of the stream tests (sample i: an 8×8 gray image filled with value i, class
i % 3, so every batch says which samples it holds) with the loader helpers that read them."""
from __future__ import annotations

import functools
import io
import itertools
import json
import tarfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from common.data import shard_list, streams
from common.datasets.shard_writer import NoBar, write_split
from common.datasets.sources import EncodedImage, Record, encode_png

N_SHARDS, PER_SHARD = 4, 10  # the id shards: 4 shards × 10 samples


def write_tar(path: Path, members: Iterable[tuple[str, bytes]]) -> None:
    """A webdataset shard holding `members` (file name, bytes) in order."""
    with tarfile.open(path, "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def write_img2dataset_shards(out: Path, images: np.ndarray, captions: list[str], per_shard: int) -> Path:
    """What img2dataset writes with `--output_format webdataset`: NNNNN.tar holding KEY.jpg (RGB JPEG),
    KEY.txt and KEY.json per sample, and beside each tar NNNNN.parquet and NNNNN_stats.json. The parquet
    files are placeholders (nothing here reads them, and pyarrow is not a dependency)."""
    out.mkdir(parents=True)
    for shard, start in enumerate(range(0, len(captions), per_shard)):
        members, count = [], min(per_shard, len(captions) - start)
        for i in range(start, start + count):
            key = f"{shard:05d}{i - start:04d}"
            jpg = io.BytesIO()
            Image.fromarray(images[i]).convert("RGB").save(jpg, format="JPEG", quality=90)
            meta = {"url": f"https://example.com/{i}.jpg", "caption": captions[i], "key": key, "status": "success",
                    "error_message": None, "width": 28, "height": 28}
            members += [(f"{key}.jpg", jpg.getvalue()), (f"{key}.txt", captions[i].encode()),
                        (f"{key}.json", json.dumps(meta).encode())]
        write_tar(out / f"{shard:05d}.tar", members)
        (out / f"{shard:05d}.parquet").write_bytes(b"PAR1" + b"\0" * 16 + b"PAR1")
        stats = {"count": count, "successes": count, "failed_to_download": 0}
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(stats))
    return out


# ---- id-image shards -----------------------------------------------------------------------------
def id_png(i: int) -> EncodedImage:
    """The encoded image of sample id `i` (0-255): 8×8 gray pixels of value i."""
    return "png", encode_png(Image.fromarray(np.full((8, 8), i, dtype=np.uint8)))


def garbage_png() -> EncodedImage:
    """A PNG signature followed by bytes no decoder reads: an undecodable image."""
    return "png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 10


def id_records(ids_: Iterable[int], label=lambda i: i % 3) -> list[Record]:
    """Records of the id images `ids_`, labelled by `label(i)`."""
    return [Record(i, functools.partial(id_png, i), label(i)) for i in ids_]


def write_id_shards(folder: Path, count: int, per_shard: int = PER_SHARD, first_id: int = 0) -> list[str]:
    """`count` id images (ids first_id …, class i % 3) in shards of `per_shard` under `folder`; their urls."""
    write_split(id_records(range(first_id, first_id + count)), folder, "train", per_shard, NoBar())
    return shard_list.resolve_shards(str(folder))


def identify(image: Image.Image, meta: dict) -> dict:
    """map_sample: the sample id, its label, and one draw from torch's RNG (tests augmentation seeding)."""
    return {"id": int(np.asarray(image)[0, 0]), "label": meta["cls"], "noise": torch.rand(2)}


def fail_on_multiples_of_7(image: Image.Image, meta: dict) -> dict:
    """`identify`, raising on ids that are multiples of 7 (a map_sample error on known samples)."""
    out = identify(image, meta)
    if out["id"] % 7 == 0:
        raise ValueError("no multiples of 7")
    return out


def take(loader: Any, n: int) -> list[dict]:
    return list(itertools.islice(iter(loader), n))


def train_loader(shards: Path, seed: int = 0, **kw: Any) -> Any:
    """The training stream of `shards` (or of `urls=`): batches of 8 through `identify`, one process."""
    urls = kw.pop("urls", None) or shard_list.resolve_shards(str(shards))
    args = {"rank": 0, "world_size": 1, "num_workers": 0, "shuffle_buffer": 16, "map_sample": identify, **kw}
    return streams.make_train_loader(urls, batch_size=8, seed=seed, **args)


def ids(batches: list[dict]) -> list[int]:
    """The sample ids of `batches`, in order."""
    return [int(i) for b in batches for i in b["id"]]
