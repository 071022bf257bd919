"""Fashion-MNIST: find the four official idx `.gz` files and parse them into numpy arrays.

Lookup order: the given root → `/usr/share/datasets/fashion-mnist` (Debian/Ubuntu package
`dataset-fashion-mnist`) → `~/.cache/evaclip/fashion-mnist` → `FileNotFoundError` that names
`scripts/get_fashion_mnist.sh`, which installs the package (or downloads the files). Nothing here installs.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Literal

import numpy as np

CLASSNAMES: list[str] = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FILES: dict[str, tuple[str, str]] = {  # split → (images, labels)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "evaclip" / "fashion-mnist"
APT_PACKAGE = "dataset-fashion-mnist"
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # idx3 uint8 images, idx1 uint8 labels


def _all_files() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _all_files())


def locate_fashion_mnist(root: Path | None = None) -> Path:
    """The folder holding the four idx `.gz` files (see the module docstring)."""
    candidates = ([Path(root)] if root is not None else []) + [SYSTEM_DIR, CACHE_DIR]
    for folder in candidates:
        if _complete(folder):
            return folder
    raise FileNotFoundError(
        f"Fashion-MNIST idx files not found in {', '.join(map(str, candidates))} — run scripts/get_fashion_mnist.sh "
        f"(installs the Debian package {APT_PACKAGE}, or downloads {', '.join(_all_files())} into {CACHE_DIR}), "
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
