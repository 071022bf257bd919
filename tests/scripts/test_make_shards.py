"""scripts/make_shards.py, the command: Fashion-MNIST read back, one-line errors naming the flag, an ImageNet-style
val folder written as a zero-shot set in clip_benchmark's layout, and `--workers` really loading in that many
processes."""
from __future__ import annotations

import io
import json
import os
import time

import pytest
from PIL import Image

from common.datasets import sources
from common.datasets.fashion_mnist import locate_fashion_mnist
from scripts.make_shards import main as make_shards_cli
from tests.support.image_sources import CLASSES, make_folder_source, read_shards, write_csv


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


def test_empty_source_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty" / "some_class").mkdir(parents=True)
    code = make_shards_cli(["--source", f"folder:{tmp_path / 'empty'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no images found" in err and "\n" not in err


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


def test_workers_2_loads_the_images_in_two_other_processes(tmp_path, monkeypatch):
    """`--workers 2`: every image is loaded in one of two worker processes, none in this one; each worker's
    first load waits (≤ 30 s) until the other has loaded one too, so both are seen however they are scheduled.
    (That the output is the same for any number of workers: tests/common/datasets/test_shard_writer.py.)
    Mutation (d): ignore the setting (`workers` not passed on to `write_split` in common/datasets/shard_writer.py,
    or `--workers` dropped by the command) — every image loads in this process, and this fails."""
    make_folder_source(tmp_path / "src")
    for i in range(60):  # several chunks of work (the pool hands out 16 images at a time)
        Image.new("L", (6 + i % 5, 7), i).save(tmp_path / "src" / CLASSES[i % 3] / f"extra{i}.png")
    loaders = tmp_path / "loaders"  # one empty file per process that loaded an image, named by its pid
    loaders.mkdir()
    load = sources.file_image

    def file_image(path, resize=None):
        mark = loaders / str(os.getpid())
        if not mark.exists():
            mark.touch()
            deadline = time.monotonic() + 30
            while len(list(loaders.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        return load(path, resize)

    monkeypatch.setattr(sources, "file_image", file_image)  # the folder source's loader, inherited by the forks
    assert make_shards_cli(["--source", f"folder:{tmp_path / 'src'}", "--out", str(tmp_path / "out"),
                            "--test-fraction", "0", "--workers", "2"]) == 0
    pids = {int(p.name) for p in loaders.iterdir()}
    assert len(pids) == 2 and os.getpid() not in pids, (pids, os.getpid())
    assert len(read_shards(tmp_path / "out" / "train")) == 75  # 3 × 5 + 60 images; the corrupt file skipped
