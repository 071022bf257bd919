"""Data-pipeline throughput: shards → PIL decode → train transform (→ block mask) → batches.

    python scripts/bench/bench_data.py [--source jpeg|fashion-mnist|DIR] [--image-size 224] [--workers 0 1]
                                 [--demand IMAGES_PER_S] [--mask-ratio 0.4]

Sources: `jpeg` (default) writes 512 real JPEG photos of --jpeg-side px (quality 90; random crops of
matplotlib's sample photo grace_hopper.jpg, 512×600) to temporary webdataset shards, the bytes a photo
corpus such as an img2dataset download holds; `fashion-mnist` 2 000 28-px PNGs; or a shard folder.
Prints one JSON line: images/s per loader-worker count (torch threads stated: set OMP_NUM_THREADS for
comparable numbers), the rate of one worker process, and how many such workers a training step
consuming --demand images/s needs (default: 2 × 1 199, twice open_clip's eager bf16 step on an H200 at
batch 256, BENCHMARKS.md: the compiled GPU step's goal). With CUDA, it also times decoding the same bytes
on the GPU (torchvision's nvjpeg `decode_jpeg(device="cuda")` + a resized crop to --image-size), the
alternative when the CPU cores cannot feed the step.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import math
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


def make_fashion_mnist_shards(tmp: Path) -> str:
    from common.datasets.shard_writer import ShardOptions, make_shards
    make_shards(ShardOptions("fashion-mnist", str(tmp), samples_per_shard=500, max_train=2000, max_test=0))
    return str(tmp / "train")


def make_jpeg_shards(tmp: Path, samples: int, side: int, seed: int = 0) -> str:
    """`samples` JPEG photos (side × side px, quality 90: random crops, flips of matplotlib's sample photo),
    10 labels, in webdataset shards of 128 samples (`jpg` + `cls`, as the loader reads them)."""
    import matplotlib.cbook
    import webdataset as wds
    from PIL import ImageOps
    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")
    rng = np.random.default_rng(seed)
    (tmp / "jpeg").mkdir()
    with wds.ShardWriter(str(tmp / "jpeg" / "shard-%06d.tar"), maxcount=128, verbose=0) as sink:
        for i in range(samples):
            scale = rng.uniform(0.5, 1.0)
            w, h = int(photo.width * scale), int(photo.height * scale)
            x, y = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
            image = photo.crop((x, y, x + w, y + h)).resize((side, side), Image.BICUBIC)
            image = ImageOps.mirror(image) if rng.random() < 0.5 else image
            data = io.BytesIO()
            image.save(data, "JPEG", quality=90)
            sink.write({"__key__": f"{i:07d}", "jpg": data.getvalue(), "cls": str(i % 10).encode()})
    return str(tmp / "jpeg")


def gpu_decode_rate(urls: list[str], image_size: int, batch_size: int, batches: int) -> float | str:
    """images/s of nvjpeg decoding + a random resized crop on the GPU, batch by batch, from the shards'
    JPEG bytes read on the CPU (reading excluded); or why it was not measured."""
    if not torch.cuda.is_available():
        return "not measured: no CUDA device"
    import tarfile

    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2
    raw = []
    for url in urls:
        with tarfile.open(url) as tar:
            raw += [torch.frombuffer(bytearray(tar.extractfile(m).read()), dtype=torch.uint8)
                    for m in tar.getmembers() if m.name.endswith(".jpg")]
    crop = v2.RandomResizedCrop(image_size, scale=(0.5, 1.0), antialias=True)
    chunks = [raw[i:i + batch_size] for i in range(0, len(raw) - batch_size + 1, batch_size)]

    def run(chunk: list[torch.Tensor]) -> None:
        images = decode_jpeg(chunk, device="cuda")
        torch.stack([crop(image) for image in images]).float().div_(255)
    run(chunks[0])  # nvjpeg start-up excluded
    torch.cuda.synchronize()
    start = time.perf_counter()
    for chunk in itertools.islice(itertools.cycle(chunks), batches):
        run(chunk)
    torch.cuda.synchronize()
    return round(batches * batch_size / (time.perf_counter() - start), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="jpeg", help="jpeg | fashion-mnist | a shard folder/pattern")
    parser.add_argument("--jpeg-side", type=int, default=256, help="side of the JPEGs the jpeg source writes")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--mask-ratio", type=float, default=0.0, help="> 0: add stage 1's block mask")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--demand", type=float, default=2 * 1199.0,
                        help="images/s the training step consumes (default: the compiled GPU step's goal)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.source == "jpeg":
            spec = make_jpeg_shards(Path(tmp), 512, args.jpeg_side)
        else:
            spec = make_fashion_mnist_shards(Path(tmp)) if args.source == "fashion-mnist" else args.source
        urls = resolve_shards(spec)
        transform, transform_name = build_transform(args.image_size)
        masker, mask_name = build_masker(args.image_size, args.patch_size, args.mask_ratio)
        sample = Sample(transform, masker)
        rates = {str(w): round(throughput(urls, sample, args.batch_size, w, args.batches), 1) for w in args.workers}
        gpu = gpu_decode_rate(urls, args.image_size, args.batch_size, args.batches) if args.source == "jpeg" else None
    per_worker = rates.get("1")
    print(json.dumps({
        "images_per_s": rates, "per_worker_images_per_s": per_worker, "demand_images_per_s": args.demand,
        "workers_needed": math.ceil(args.demand / per_worker) if per_worker else None,
        "gpu_decode_images_per_s": gpu, "image_size": args.image_size, "batch_size": args.batch_size,
        "source": args.source if args.source != "jpeg" else f"jpeg {args.jpeg_side}px q90 x512",
        "transform": transform_name, "mask": mask_name, "torch_threads": torch.get_num_threads(),
        "rng_swap_us_per_sample": round(rng_swap_us(), 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
