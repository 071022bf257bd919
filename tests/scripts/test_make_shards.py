"""scripts/make_shards.py, the command: Fashion-MNIST read back, one-line errors naming the flag, an ImageNet-style
val folder written as a zero-shot set in clip_benchmark's layout, and `--workers` really loading in that many
processes."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from common.datasets.fashion_mnist import locate_fashion_mnist

from scripts.make_shards import main as make_shards_cli
from tests.support.image_sources import read_shards, write_csv


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
