"""Data-pipeline throughput: shards → PIL decode → train transform (→ block mask) → batches.

    python scripts/bench_data.py [--shards DIR] [--image-size 56] [--mask-ratio 0.4] [--workers 0 1]

Without --shards it writes a 2000-sample Fashion-MNIST shard set to a temp dir. Prints one JSON line
with images/s per worker count (torch threads stated: set OMP_NUM_THREADS for comparable numbers).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from common.data.samples import PrivateRNG
from common.data.shard_list import resolve_shards
from common.data.streams import make_train_loader


def build_transform(image_size: int) -> tuple[Callable[[Image.Image], torch.Tensor], str]:
    from common.config.sections import AugmentConfig
    from common.data.transforms import train_transform
    return train_transform(image_size, AugmentConfig()), "common.data.transforms.train_transform"


def build_masker(image_size: int, patch: int, ratio: float) -> tuple[Callable[[], torch.Tensor] | None, str]:
    if ratio <= 0:
        return None, "off"
    try:
        from stage1_mim.masking import BlockMaskGenerator, num_masked_for_ratio
    except ImportError as err:
        return None, f"skipped ({err})"
    grid = (image_size // patch, image_size // patch)
    masker = BlockMaskGenerator(grid, num_masked_for_ratio(grid, ratio), 4, None, (0.3, 1 / 0.3))

    def draw() -> torch.Tensor:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
        return torch.from_numpy(np.asarray(masker(rng)).reshape(-1))
    return draw, f"stage1_mim.masking ratio={ratio} grid={grid}"


class Sample:
    """Picklable map_sample: transform (+ mask) → {"image", "label"(, "mask")}."""

    def __init__(self, transform: Callable, masker: Callable | None):
        self.transform, self.masker = transform, masker

    def __call__(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
        out = {"image": self.transform(image), "label": meta["cls"] if meta["cls"] is not None else -1}
        if self.masker is not None:
            out["mask"] = self.masker()
        return out


def throughput(urls: list[str], sample: Sample, batch_size: int, workers: int, batches: int) -> float:
    loader = iter(make_train_loader(urls, sample, batch_size, seed=0, num_workers=workers))
    next(loader)  # start-up (worker fork, shuffle buffer fill) excluded
    start = time.perf_counter()
    for _ in itertools.islice(loader, batches):
        pass
    return batches * batch_size / (time.perf_counter() - start)


def rng_swap_us(n: int = 2000) -> float:
    """Cost of the private-RNG swap around each map_sample call, in µs."""
    rng = PrivateRNG(0)
    start = time.perf_counter()
    for _ in range(n):
        with rng:
            pass
    return (time.perf_counter() - start) / n * 1e6


def make_default_shards(tmp: Path) -> str:
    from common.datasets.shard_writer import ShardOptions, make_shards
    make_shards(ShardOptions("fashion-mnist", str(tmp), samples_per_shard=500, max_train=2000, max_test=0))
    return str(tmp / "train")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=None, help="shard folder/pattern (default: temp Fashion-MNIST)")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--mask-ratio", type=float, default=0.4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=15)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        spec = args.shards or make_default_shards(Path(tmp))
        urls = resolve_shards(spec)
        transform, transform_name = build_transform(args.image_size)
        masker, mask_name = build_masker(args.image_size, args.patch_size, args.mask_ratio)
        sample = Sample(transform, masker)
        rates = {str(w): round(throughput(urls, sample, args.batch_size, w, args.batches), 1) for w in args.workers}
    print(json.dumps({"images_per_s": rates, "image_size": args.image_size, "batch_size": args.batch_size,
                      "transform": transform_name, "mask": mask_name, "torch_threads": torch.get_num_threads(),
                      "rng_swap_us_per_sample": round(rng_swap_us(), 1), "shards": args.shards or "fashion-mnist[:2000]"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
