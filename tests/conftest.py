"""Shared fixtures, each made once per test process (pytest-xdist: once per worker that needs it): a small real
Fashion-MNIST shard set, caption-only shards in img2dataset's layout, the id-image shards of the stream tests,
a tiny Hugging Face text tower, and a tiny stage-2 model exported as an open_clip folder (a stage-1 teacher).

The layout of tests/ (a test is found by the path of what it tests):
    tests/<package>/<module path>/test_<module>.py   one module's tests, in this process
    tests/scripts/test_<script>.py                   a script's tests
    tests/configs/                                   the shipped configs
    tests/multiprocess/                              tests that start 2+ processes (gloo, torchrun, DeepSpeed)
    tests/e2e/                                       whole command-line runs of a stage, the demo or the recipe
    tests/support/                                   helpers and tasks the tests share (no tests)
"""
from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The files that take longest, first: pytest-xdist (`--dist loadfile`, scripts/test.sh) hands whole files to
# its workers in collection order, so these start at once and the rest fills in around them.
FIRST_FILES = ("tests/e2e/test_demo.py", "tests/multiprocess/test_deepspeed.py")


def pytest_collection_modifyitems(config, items: list[pytest.Item]) -> None:
    """Order the files as the workers should take them: FIRST_FILES, then the files with slow tests, then the
    rest; each file's tests stay together and in order (its module fixtures are made once). Also where torch
    gets one thread: only a process that collects runs tests (pytest-xdist's controller never imports torch)."""
    import torch
    torch.set_num_threads(1)
    files = [item.nodeid.split("::")[0] for item in items]
    slow = {file for file, item in zip(files, items) if item.get_closest_marker("slow") is not None}

    def rank(file: str) -> int:
        return FIRST_FILES.index(file) if file in FIRST_FILES else len(FIRST_FILES) + (file not in slow)
    order = {file: (rank(file), i) for i, file in reversed(list(enumerate(files)))}  # a file's first position
    items.sort(key=lambda item: order[item.nodeid.split("::")[0]])


def pytest_collection_finish(session) -> None:
    """Freeze what collection imported (torch, timm, open_clip, transformers, the tests): the garbage collector
    then no longer walks it. Every run the engine closes calls `gc.collect()` (accelerate's `free_memory` and
    the clean shutdown of `common/train/accelerator.py`), and over that heap each call took ~1 s."""
    gc.freeze()


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
    from tests.support.tiny import TINY_STAGE2
    return [f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            f"train.output_dir={tmp_path / 'run'}", *TINY_STAGE2]


@pytest.fixture(scope="session")
def caption_shards(tmp_path_factory) -> Path:
    """Caption-only pairs in img2dataset's layout (no labels, no classnames.txt): ROOT/train (64 Fashion-MNIST
    images, 4 shards) and ROOT/test (32, 2 shards), each caption naming the garment and the item."""
    from common.datasets.fashion_mnist import CLASSNAMES, load_split, locate_fashion_mnist
    from tests.support.shards import write_img2dataset_shards
    root = tmp_path_factory.mktemp("img2dataset")
    for split, count in (("train", 64), ("test", 32)):
        images, labels = load_split(locate_fashion_mnist(), split)
        captions = [f"a {CLASSNAMES[int(labels[i])].lower()} on a plain background, item {i}" for i in range(count)]
        write_img2dataset_shards(root / split, images, captions, per_shard=16)
    return root


@pytest.fixture(scope="session")
def id_shards(tmp_path_factory) -> Path:
    """The id-image shards (tests/support/shards.py): 4 shards × 10 samples under ROOT/train, classnames.txt
    (a, b, c) in ROOT; returns ROOT/train."""
    from tests.support.shards import N_SHARDS, PER_SHARD, write_id_shards
    root = tmp_path_factory.mktemp("id_shards")
    write_id_shards(root / "train", N_SHARDS * PER_SHARD)
    (root / "classnames.txt").write_text("a\nb\nc\n")
    return root / "train"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A random 2-layer BERT (width 32) + a WordPiece tokenizer, saved as an HF model folder."""
    from tests.support.hf_text import save_tiny_bert
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def teacher_export(fmnist_shards, tmp_path_factory) -> Path:
    """A tiny stage-2 model trained 2 steps and exported to an open_clip folder (a stage-1 teacher)."""
    from common.export import export_open_clip
    from stage2_contrastive.train import main as stage2_main
    from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2
    tmp = tmp_path_factory.mktemp("teacher")
    args = ["--config", STAGE2_CONFIG, "train.steps=2", f"train.output_dir={tmp / 'run'}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}", *TINY_STAGE2]
    assert stage2_main(args) == 0
    return export_open_clip(tmp / "run", tmp / "export")
