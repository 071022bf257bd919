"""Shared fixtures: a small real Fashion-MNIST shard set (made once per session) and tiny model configs."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# Tiny but real: the registered Eva at 28 px (2×2 patches) and a 2-layer text tower.
TINY_STAGE2 = [
    "model.embed_dim=32", "model.text.context_length=16", "model.text.width=32", "model.text.heads=2",
    "model.text.layers=2", "data.image_size=28", "data.num_workers=0", "data.shuffle_buffer=64",
    "data.eval_max_samples=64", "data.eval_batch_size=32", "train.batch_size=8", "train.log_every=1",
    "train.progress=false", "train.tensorboard=false", "optim.warmup_steps=2",
]


def single_process_run(micro_batch: int = 8) -> "RunContext":
    """The RunContext of one CPU process without DeepSpeed (tasks built outside the engine)."""
    from common.run_context import RunContext
    return RunContext(rank=0, world_size=1, device=torch.device("cpu"), micro_batch=micro_batch, grad_accum=1,
                      precision="fp32", deepspeed=False)


@pytest.fixture(scope="session")
def fmnist_shards(tmp_path_factory) -> Path:
    """512 train / 128 test Fashion-MNIST samples in 128-sample shards, with classnames.txt."""
    from common.datasets.shard_writer import ShardOptions, make_shards
    out = tmp_path_factory.mktemp("fmnist_shards")
    make_shards(ShardOptions(source="fashion-mnist", out=str(out), samples_per_shard=128,
                             max_train=512, max_test=128, seed=0))
    return out


@pytest.fixture
def stage2_overrides(fmnist_shards, tmp_path) -> list[str]:
    return [f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            f"train.output_dir={tmp_path / 'run'}", *TINY_STAGE2]


def write_img2dataset_shards(out: Path, images: "np.ndarray", captions: list[str], per_shard: int) -> Path:
    """What img2dataset writes with `--output_format webdataset`: NNNNN.tar holding KEY.jpg (RGB JPEG),
    KEY.txt and KEY.json per sample, and beside each tar NNNNN.parquet and NNNNN_stats.json. The parquet
    files are placeholders (nothing here reads them, and pyarrow is not a dependency)."""
    import io
    import json

    from PIL import Image

    from tests.support.run_records import write_tar
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


@pytest.fixture(scope="session")
def caption_shards(tmp_path_factory) -> Path:
    """Caption-only pairs in img2dataset's layout (no labels, no classnames.txt): ROOT/train (64 Fashion-MNIST
    images, 4 shards) and ROOT/test (32, 2 shards), each caption naming the garment and the item."""
    from common.datasets.fashion_mnist import CLASSNAMES, load_split, locate_fashion_mnist
    root = tmp_path_factory.mktemp("img2dataset")
    for split, count in (("train", 64), ("test", 32)):
        images, labels = load_split(locate_fashion_mnist(), split)
        captions = [f"a {CLASSNAMES[int(labels[i])].lower()} on a plain background, item {i}" for i in range(count)]
        write_img2dataset_shards(root / split, images, captions, per_shard=16)
    return root


@pytest.fixture(scope="session")
def uninterrupted_linear_run(tmp_path_factory):
    """nproc → the linear task's `LINEAR_RUN` trained without interruption on nproc processes (made once
    per session): what every fault-and-resume test of that run must reproduce bit for bit."""
    import subprocess

    from tests.support.launch import LINEAR_RUN, ROOT, linear_run, subprocess_env
    made: dict[int, Path] = {}

    def get(nproc: int) -> Path:
        if nproc not in made:
            out = tmp_path_factory.mktemp(f"uninterrupted_{nproc}") / "run"
            subprocess.run(linear_run(nproc, out, *LINEAR_RUN), cwd=ROOT, env=subprocess_env(), check=True,
                           capture_output=True, timeout=600)
            made[nproc] = out
        return made[nproc]
    return get
