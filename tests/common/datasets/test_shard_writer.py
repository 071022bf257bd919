"""common/datasets/shard_writer.py (with the folder and CSV sources of common/datasets/sources.py): round trips
that keep the files' bytes, bad images skipped and counted, determinism for a seed and for any number of
workers, reuse of a complete output, resizing, CSV columns and several captions per image."""
from __future__ import annotations

import io
import json

from PIL import Image

from common.datasets.shard_writer import make_shards
from tests.support.image_sources import CLASSES, all_files, image_of, make_folder_source, opts, read_shards, write_csv


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


def test_csv_named_columns_and_several_captions_per_image(tmp_path):
    rows = [f"x{i},imgs/{i % 4}.png,caption {i} of image {i % 4}" for i in range(10)]
    path = write_csv(tmp_path, "id,file,title", rows)
    make_shards(opts(f"csv:{path}", tmp_path / "out", test_fraction=0.0, image_column="file",
                     caption_column="title"))
    samples = read_shards(tmp_path / "out" / "train")
    captions = {Image.open(io.BytesIO(s["png"])).getpixel((0, 0))[0] // 20: s["txt"].decode().splitlines()
                for s in samples.values()}
    assert captions == {k: [f"caption {i} of image {k}" for i in range(k, 10, 4)] for k in range(4)}
