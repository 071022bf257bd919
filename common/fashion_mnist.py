"""Fashion-MNIST: find (or fetch) the four official idx `.gz` files and parse them into numpy arrays.

Lookup order: the given root → `/usr/share/datasets/fashion-mnist` (Debian/Ubuntu package
`dataset-fashion-mnist`) → `~/.cache/evaclip/fashion-mnist` → `apt-get install` (as root) → download from
the official mirror into the cache → `FileNotFoundError` that says how to get the files.
"""
from __future__ import annotations

import gzip
import logging
import os
import shutil
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Literal

import numpy as np

log = logging.getLogger("evaclip")

CLASSNAMES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES: dict[str, tuple[str, str]] = {  # split → (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "evaclip" / "fashion-mnist"
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
APT_PACKAGE = "dataset-fashion-mnist"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx3 uint8 images, idx1 uint8 labels


def _all_files() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _all_files())


def _apt_install() -> bool:
    """`apt-get install -y dataset-fashion-mnist` (after `apt-get update` if the first try fails)."""
    if shutil.which("apt-get") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        return False
    cmd = ["apt-get", "install", "-y", APT_PACKAGE]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in range(2):
        log.info("Fashion-MNIST: %s", " ".join(cmd))
        if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
            return _complete(SYSTEM_DIR)
        if attempt == 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
    return False


def _download(folder: Path, timeout: float = 60.0) -> bool:
    """Fetch the four files from the official mirror into `folder` (atomic per file)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name in _all_files():
            target = folder / name
            if target.is_file():
                continue
            log.info("Fashion-MNIST: downloading %s%s", URL, name)
            tmp = target.with_suffix(".part")
            with urllib.request.urlopen(URL + name, timeout=timeout) as response, open(tmp, "wb") as out:
                shutil.copyfileobj(response, out)
            tmp.replace(target)
    except OSError as err:  # URLError, timeouts and disk errors are all OSErrors
        log.warning("Fashion-MNIST download failed: %s", err)
        return False
    return _complete(folder)


def locate_fashion_mnist(root: Path | None = None, *, fetch: bool = True) -> Path:
    """The folder holding the four idx `.gz` files; installs or downloads them when `fetch` is True."""
    candidates = ([Path(root)] if root is not None else []) + [SYSTEM_DIR, CACHE_DIR]
    for folder in candidates:
        if _complete(folder):
            return folder
    if fetch and _apt_install():
        return SYSTEM_DIR
    if fetch and _download(CACHE_DIR):
        return CACHE_DIR
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))} — install them with "
        f"`apt-get install {APT_PACKAGE}`, or download {', '.join(_all_files())} from {URL} into {CACHE_DIR}, "
        "or use your own images with `scripts/make_shards.py --source folder:PATH`")


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse one gzipped idx file: magic, dims (big-endian int32), then uint8 data."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"corrupt Fashion-MNIST file {path}: {err} — delete it and fetch it again") from err
    ndim = magic & 0xFF
    if len(raw) < 4 + 4 * ndim or struct.unpack(">i", raw[:4])[0] != magic:
        found = struct.unpack(">i", raw[:4])[0] if len(raw) >= 4 else None
        raise ValueError(f"corrupt Fashion-MNIST file {path}: magic {found}, expected {magic}")
    dims = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"corrupt Fashion-MNIST file {path}: {data.size} bytes of data, header says {dims}")
    return data.reshape(dims)


def load_split(root: Path, split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """images `[N, 28, 28] uint8`, labels `[N] int64` of one official split."""
    if split not in FILES:
        raise ValueError(f"unknown Fashion-MNIST split '{split}' — use 'train' or 'test'")
    image_file, label_file = FILES[split]
    images = _read_idx(Path(root) / image_file, IMAGES_MAGIC)
    labels = _read_idx(Path(root) / label_file, LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0] or labels.max(initial=0) >= len(CLASSNAMES):
        raise ValueError(f"corrupt Fashion-MNIST {split} split in {root}: {images.shape[0]} images, "
                         f"{labels.shape[0]} labels, max label {labels.max(initial=0)}")
    return images, labels
