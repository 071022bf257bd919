"""Image sources for the shard-writing tests (`common/datasets/`, scripts/make_shards.py): a class folder of
gray and RGB images of several sizes with one corrupt file, a CSV of image paths and captions, and readers of
the shards written from them."""
from __future__ import annotations

import tarfile
from pathlib import Path

from PIL import Image

from common.datasets.shard_writer import ShardOptions

CLASSES = ["zebra", "apple", "mango"]  # written unsorted: class ids must follow sorted names


def read_shards(split_dir: Path) -> dict[str, dict[str, bytes]]:
    """All samples of a split read with plain tarfile: {key: {ext: bytes}}."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(split_dir.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def make_folder_source(root: Path) -> dict[tuple[str, tuple[int, int]], Path]:
    """3 classes × 5 images (gray and RGB, several sizes, one JPEG) + a corrupt file; {(class, size): file}."""
    files = {}
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(5):
            mode = "L" if i % 2 == 0 else "RGB"
            size = (10 + i, 12 + c)
            image = Image.new(mode, size, color=(c * 40 + i) if mode == "L" else (c * 40, i * 30, 7))
            ext = "jpg" if (c, i) == (0, 1) else "png"
            image.save(root / name / f"img{i}.{ext}")
            files[(name, size)] = root / name / f"img{i}.{ext}"
    (root / "apple" / "broken.png").write_bytes(b"\x89PNG this is not an image" * 3)
    return files


def opts(source: str, out: Path, **kw) -> ShardOptions:
    return ShardOptions(source=source, out=str(out), **{"samples_per_shard": 4, "test_fraction": 0.2, **kw})


def image_of(sample: dict[str, bytes]) -> tuple[str, bytes]:
    """(key, bytes) of a sample's one image."""
    (key,) = [k for k in ("png", "jpg", "webp") if k in sample]
    return key, sample[key]


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(4):
        Image.new("RGB", (9, 9), (i * 20, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path
