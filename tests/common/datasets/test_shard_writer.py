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


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_workers_write_byte_identical_output(tmp_path):
    make_folder_source(tmp_path / "src")
    for i in range(60):  # enough images for several chunks of work per worker
        Image.new("L", (6 + i % 5, 7), i).save(tmp_path / "src" / CLASSES[i % 3] / f"extra{i}.png")
    for workers in (1, 2):
        summary = make_shards(opts(f"folder:{tmp_path / 'src'}", tmp_path / f"w{workers}", workers=workers))
        assert summary["train"]["skipped_bad_image"] + summary["test"]["skipped_bad_image"] == 1
    one, two = all_files(tmp_path / "w1"), all_files(tmp_path / "w2")
    assert sum(name.endswith(".tar") for name in one) >= 15 and one == two


def test_resize_downscales_and_re_encodes_only_large_images(tmp_path):
    (tmp_path / "src" / "cat").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "src" / "cat" / "big.jpg", quality=80)
    Image.new("RGB", (20, 30), (10, 200, 10)).save(tmp_path / "src" / "cat" / "small.jpg", quality=80)
    make_shards(opts(f"folder:{tmp_path / 'src'}", tmp_path / "out", test_fraction=0.0, resize=24))
    images = {Image.open(io.BytesIO(s["jpg"])).size: s["jpg"] for s in read_shards(tmp_path / "out" / "train").values()}
    assert set(images) == {(32, 24), (20, 30)}  # shorter side 48 → 24; 20 ≤ 24 stays
    assert images[(20, 30)] == (tmp_path / "src" / "cat" / "small.jpg").read_bytes()


def write_csv(tmp_path: Path, header: str, rows: list[str]) -> Path:
    (tmp_path / "imgs").mkdir(exist_ok=True)
    for i in range(4):
        Image.new("RGB", (9, 9), (i * 20, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    path = tmp_path / "pairs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_named_columns_and_several_captions_per_image(tmp_path):
    rows = [f"x{i},imgs/{i % 4}.png,caption {i} of image {i % 4}" for i in range(10)]
    path = write_csv(tmp_path, "id,file,title", rows)
    make_shards(opts(f"csv:{path}", tmp_path / "out", test_fraction=0.0, image_column="file",
                     caption_column="title"))
    samples = read_shards(tmp_path / "out" / "train")
    captions = {Image.open(io.BytesIO(s["png"])).getpixel((0, 0))[0] // 20: s["txt"].decode().splitlines()
                for s in samples.values()}
    assert captions == {k: [f"caption {i} of image {k}" for i in range(k, 10, 4)] for k in range(4)}


def test_a_training_sample_with_several_captions_gets_one_drawn_by_the_streams_seed():
    from common.data.samples import PrivateRNG
    from common.data.templates import caption_of
    meta = {"captions": [f"caption {i}" for i in range(6)], "txt": "caption 0", "cls": None}

    def draws(seed: int) -> list[str]:
        with PrivateRNG(seed):
            return [caption_of(meta, None, ()) for _ in range(12)]
    assert draws(0) == draws(0) and draws(0) != draws(1) and len(set(draws(0))) > 2
    assert caption_of(meta, None, (), index=0) == "caption 0"  # eval: the first caption


@pytest.mark.parametrize("header, flags, message", [
    ("file,title", ["--image-column", "path"], "has no column 'path' — --image-column must name one of: file, title"),
    ("file,title", ["--caption-column", "title"], "the caption column 'title' is empty in every row — name the "
                                                  "column that holds them with --caption-column"),
])
def test_csv_column_errors_name_the_flag(tmp_path, capsys, header, flags, message):
    path = write_csv(tmp_path, header, [f"imgs/{i}.png," for i in range(4)])
    code = make_shards_cli(["--source", f"csv:{path}", "--out", str(tmp_path / "out"), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err, err


def test_imagefolder_val_writes_a_zero_shot_set_in_clip_benchmarks_layout(tmp_path, capsys):
    """Synset folders (a subset of the mapping, one unlisted in it would be an error) → test/0.tar … with
    nshards.txt, labels = the synsets' lines in the mapping file, classnames.txt in the mapping's order,
    and the templates with {c}."""
    mapping = ["n01440764 tench", "n01443537 goldfish", "n01484850 great white shark"]
    (tmp_path / "map.txt").write_text("\n".join(mapping) + "\n")
    for synset, count in (("n01443537", 3), ("n01484850", 2)):
        (tmp_path / "val" / synset).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 10), (i, 0, 0)).save(tmp_path / "val" / synset / f"{i}.JPEG")
    out = tmp_path / "set"
    assert make_shards_cli(["--source", f"imagefolder-val:{tmp_path / 'val'}", "--classnames",
                            str(tmp_path / "map.txt"), "--out", str(out), "--layout", "clip_benchmark",
                            "--samples-per-shard", "2", "--templates", "openai_imagenet"]) == 0
    assert sorted(p.name for p in (out / "test").glob("*.tar")) == ["0.tar", "1.tar", "2.tar"]
    assert (out / "test" / "nshards.txt").read_text().strip() == "3" and not (out / "train").exists()
    assert (out / "classnames.txt").read_text().splitlines() == ["tench", "goldfish", "great white shark"]
    templates = (out / "zeroshot_classification_templates.txt").read_text().splitlines()
    assert len(templates) == 80 and all("{c}" in t for t in templates)
    labels = sorted(int(s["cls"]) for s in read_shards(out / "test").values())
    assert labels == [1, 1, 1, 2, 2] and all("jpg" in s for s in read_shards(out / "test").values())
    (tmp_path / "val" / "n99999999").mkdir()
    code = make_shards_cli(["--source", f"imagefolder-val:{tmp_path / 'val'}", "--classnames",
                            str(tmp_path / "map.txt"), "--out", str(tmp_path / "bad")])
    assert code == 2 and "folder n99999999 of imagefolder-val" in capsys.readouterr().err
