"""scripts/make_shards.py and common/datasets/shard_writer.py: round trips, bad images, determinism, reuse."""
from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from common.datasets.fashion_mnist import load_split, locate_fashion_mnist
from common.datasets.shard_writer import ShardOptions, make_shards
from scripts.make_shards import main as make_shards_cli

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


def test_folder_source_round_trip_keeps_the_files_bytes_and_skips_a_corrupt_image(tmp_path):
    files = make_folder_source(tmp_path / "src")
    summary = make_shards(opts(f"folder:{tmp_path / 'src'}", tmp_path / "out"))
    out = tmp_path / "out"
    assert (out / "classnames.txt").read_text().split("\n")[:3] == sorted(CLASSES)
    assert sum(s["written"] for s in summary.values()) == 15
    assert sum(s["skipped_bad_image"] for s in summary.values()) == 1
    assert summary["test"]["written"] + summary["test"]["skipped_bad_image"] == 3  # round(0.2 · 16)
    assert json.loads((out / "summary.json").read_text()) == summary
    for split in ("train", "test"):
        samples = read_shards(out / split)
        sizes = json.loads((out / split / "sizes.json").read_text())
        assert len(samples) == sum(sizes.values()) == summary[split]["written"]
        for sample in samples.values():
            key, payload = image_of(sample)
            name = sorted(CLASSES)[int(sample["cls"])]
            source = files[(name, Image.open(io.BytesIO(payload)).size)]
            assert payload == source.read_bytes()  # the file as it was: no re-encode, class intact
            assert key == {".png": "png", ".jpg": "jpg"}[source.suffix]


def test_csv_source_round_trip_keeps_captions(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = ["path,caption"]
    for i in range(8):
        Image.new("RGB", (9, 9), (i * 20, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
        rows.append(f"imgs/{i}.png,\"a red square, number {i}\"")
    rows.append("imgs/missing.png,never written")
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    summary = make_shards(opts(f"csv:{tmp_path / 'pairs.csv'}", tmp_path / "out", test_fraction=0.25))
    assert sum(v["written"] for v in summary.values()) == 8
    assert sum(v["skipped_bad_image"] for v in summary.values()) == 1
    assert summary["test"]["written"] + summary["test"]["skipped_bad_image"] == 2  # round(0.25 · 9)
    assert not (tmp_path / "out" / "classnames.txt").exists()
    captions = set()
    for split in ("train", "test"):
        for sample in read_shards(tmp_path / "out" / split).values():
            assert "cls" not in sample
            red = Image.open(io.BytesIO(image_of(sample)[1])).getpixel((0, 0))[0]
            caption = sample["txt"].decode()
            assert caption == f"a red square, number {red // 20}"
            captions.add(caption)
    assert len(captions) == 8


def test_fashion_mnist_subsample_reads_back(tmp_path):
    locate_fashion_mnist()  # scripts/test.sh installs it (scripts/get_fashion_mnist.sh); missing is a failure
    out = tmp_path / "fm"
    assert make_shards_cli(["--source", "fashion-mnist", "--out", str(out), "--max-train", "64",
                            "--max-test", "32", "--samples-per-shard", "50"]) == 0
    assert (out / "classnames.txt").read_text().splitlines()[0] == "T-shirt/top"
    for split, n in (("train", 64), ("test", 32)):
        samples = read_shards(out / split)
        assert len(samples) == n == sum(json.loads((out / split / "sizes.json").read_text()).values())
        for sample in samples.values():
            assert 0 <= int(sample["cls"]) <= 9
            image = Image.open(io.BytesIO(sample["png"]))
            assert (image.size, image.mode) == ((28, 28), "L")


def test_same_seed_gives_byte_identical_shards(tmp_path):
    make_folder_source(tmp_path / "src")
    source = f"folder:{tmp_path / 'src'}"
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        make_shards(opts(source, tmp_path / name, seed=seed))
    tars = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tar"))
    assert tars and tars == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.tar"))
    assert all((tmp_path / "a" / t).read_bytes() == (tmp_path / "b" / t).read_bytes() for t in tars)
    assert (tmp_path / "a/train/shard-000000.tar").read_bytes() != (tmp_path / "c/train/shard-000000.tar").read_bytes()


def test_complete_output_is_reused_unless_args_change_or_overwrite(tmp_path):
    make_folder_source(tmp_path / "src")
    source, out = f"folder:{tmp_path / 'src'}", tmp_path / "out"
    make_shards(opts(source, out))
    stale = out / "train" / "shard-000099.tar"  # a rewrite deletes every old shard first
    stale.write_bytes(b"")
    make_shards(opts(source, out))
    assert stale.exists()
    make_shards(opts(source, out, overwrite=True))
    assert not stale.exists()
    make_shards(opts(source, out, samples_per_shard=100))
    assert json.loads((out / "train" / "sizes.json").read_text()) == {"shard-000000.tar": 12}


def test_empty_source_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    code = make_shards_cli(["--source", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no images found" in err and "\n" not in err


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt Fashion-MNIST file .*magic"):
        load_split(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_split(tmp_path, "test")
