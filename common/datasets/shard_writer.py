"""Write webdataset `.tar` shards from Fashion-MNIST, an image folder, or a CSV of (image, caption).

Layout under OUT:
    train/shard-000000.tar …   test/shard-000000.tar …   (per sample: __key__, png, cls?, txt?)
    train/sizes.json, test/sizes.json    {shard file name: samples}
    classnames.txt                        one class name per line (absent for a CSV source)
    summary.json                          {split: {"written": n, "skipped_bad_image": k}}
    make_shards.json                      the arguments that produced OUT (reuse check)

Deterministic for a seed: holdout, subsample and write order come from `np.random.default_rng([seed,
purpose])`, PNG encoding is deterministic, and every tar header has mtime 0 and fixed owner/mode, so
the same seed gives byte-identical shards. Images keep their size and mode (grayscale stays "L").
"""
from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger("evaclip")

SPLITS = ("train", "test")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
FORMAT_VERSION = 1
_SEED_PURPOSE = {"holdout": 0, "train": 1, "test": 2}


class EmptySourceError(ValueError):
    """The source holds no images at all."""


@dataclass
class ShardOptions:
    source: str                       # fashion-mnist[:ROOT] | folder:PATH | csv:FILE
    out: str
    samples_per_shard: int = 5000
    max_train: Optional[int] = None   # None: all
    max_test: Optional[int] = None
    test_fraction: float = 0.1        # holdout for folder/csv sources
    seed: int = 0
    overwrite: bool = False


@dataclass
class Record:
    """One source sample; `load()` returns PNG bytes or raises on a bad image."""
    index: int
    load: Callable[[], bytes]
    label: Optional[int] = None
    caption: Optional[str] = None


@dataclass
class Source:
    splits: dict[str, list[Record]]
    classnames: list[str] = field(default_factory=list)


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


# ---- encoding ------------------------------------------------------------------------------------
def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of `image` at its own size; modes PNG cannot hold become RGB(A)."""
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _array_png(images: np.ndarray, i: int) -> bytes:
    return encode_png(Image.fromarray(np.ascontiguousarray(images[i])))  # [H, W] uint8 → mode "L"


def _file_png(path: Path) -> bytes:
    """Decode fully (catches truncated files); PNGs are kept byte for byte, others re-encoded."""
    with Image.open(path) as image:
        image.load()
        if image.format == "PNG":
            return path.read_bytes()
        return encode_png(ImageOps.exif_transpose(image))


# ---- sources -------------------------------------------------------------------------------------
def _holdout(records: list[Record], test_fraction: float, seed: int) -> dict[str, list[Record]]:
    """Seeded random holdout: floor(fraction·N + 0.5) records go to test, in source order."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"--test-fraction {test_fraction} must be in [0, 1)")
    order = np.random.default_rng([seed, _SEED_PURPOSE["holdout"]]).permutation(len(records))
    n_test = int(math.floor(test_fraction * len(records) + 0.5))
    test = set(order[:n_test].tolist())
    return {"train": [r for i, r in enumerate(records) if i not in test],
            "test": [r for i, r in enumerate(records) if i in test]}


def fashion_mnist_source(root: Optional[str]) -> Source:
    from common.datasets.fashion_mnist import CLASSNAMES, load_split, locate_fashion_mnist
    folder = locate_fashion_mnist(Path(root) if root else None)
    splits = {}
    for split in SPLITS:
        images, labels = load_split(folder, split)
        splits[split] = [Record(i, functools.partial(_array_png, images, i), int(labels[i]))
                         for i in range(len(labels))]
    return Source(splits, list(CLASSNAMES))


def folder_source(path: Path, test_fraction: float, seed: int) -> Source:
    """PATH/<class>/**/<image>: class ids follow the sorted folder names."""
    if not path.is_dir():
        raise FileNotFoundError(f"folder source {path} is not a directory")
    class_dirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    records: list[Record] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
        records += [Record(len(records) + i, functools.partial(_file_png, p), label) for i, p in enumerate(files)]
    if not records:
        raise EmptySourceError(f"no images found in folder:{path} — expected {path}/<class name>/<image>"
                               f"{{{','.join(sorted(IMAGE_EXTS))}}}")
    return Source(_holdout(records, test_fraction, seed), [d.name for d in class_dirs])


def _is_header(row: list[str], base: Path) -> bool:
    first = row[0].strip()
    return Path(first).suffix.lower() not in IMAGE_EXTS and not (base / first).is_file()


def csv_source(path: Path, test_fraction: float, seed: int) -> Source:
    """CSV rows `image path, caption` (header optional); relative paths resolve against the CSV's folder."""
    if not path.is_file():
        raise FileNotFoundError(f"csv source {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if row and row[0].strip()]
    if rows and _is_header(rows[0], path.parent):
        rows = rows[1:]
    records = []
    for i, row in enumerate(rows):
        image_path = path.parent / row[0].strip()  # an absolute path stays absolute
        caption = row[1].strip() if len(row) > 1 and row[1].strip() else None
        records.append(Record(i, functools.partial(_file_png, image_path), None, caption))
    if not records:
        raise EmptySourceError(f"no images listed in csv:{path} — expected rows 'image path, caption'")
    return Source(_holdout(records, test_fraction, seed))


def open_source(opts: ShardOptions) -> Source:
    kind, _, arg = opts.source.partition(":")
    if kind == "fashion-mnist":
        return fashion_mnist_source(arg or None)
    if kind == "folder" and arg:
        return folder_source(Path(arg), opts.test_fraction, opts.seed)
    if kind == "csv" and arg:
        return csv_source(Path(arg), opts.test_fraction, opts.seed)
    raise ValueError(f"unknown --source '{opts.source}' — use fashion-mnist, folder:PATH or csv:FILE")


# ---- writing -------------------------------------------------------------------------------------
def _write_order(records: list[Record], limit: Optional[int], seed: int, split: str) -> list[Record]:
    """A seeded random subset of `limit` records (all when None), in seeded random order."""
    order = np.random.default_rng([seed, _SEED_PURPOSE[split]]).permutation(len(records))
    if limit is not None:
        order = order[:max(limit, 0)]
    return [records[i] for i in order]


def write_split(records: list[Record], out_dir: Path, split: str, samples_per_shard: int,
                bar: ProgressBar) -> dict[str, int]:
    """Encode and write `records` in the given order; bad images are skipped and counted."""
    import webdataset as wds  # imports torch: kept off the fast "already complete" path
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("shard-*.tar"), out_dir / "sizes.json"]:
        old.unlink(missing_ok=True)
    writer, sizes, skipped = None, {}, 0
    try:
        for record in records:
            bar.update(1)
            try:
                png = record.load()
            except Exception as err:  # PIL raises many types for corrupt files
                skipped += 1
                log.warning("skipping bad image #%d (%s split): %r", record.index, split, err)
                continue
            sample: dict[str, Any] = {"__key__": f"{split}-{record.index:07d}", "png": png}
            if record.label is not None:
                sample["cls"] = record.label
            if record.caption:
                sample["txt"] = record.caption
            if writer is None:  # int mtime: a float one makes tarfile add a PAX header per member (2× size)
                writer = wds.ShardWriter(str(out_dir / "shard-%06d.tar"), maxcount=samples_per_shard,
                                         verbose=0, mtime=0, user="evaclip", group="evaclip")
            writer.write(sample)
            name = Path(writer.fname).name
            sizes[name] = sizes.get(name, 0) + 1
    finally:
        if writer is not None:
            writer.close()
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    return {"written": sum(sizes.values()), "skipped_bad_image": skipped}


def _args_record(opts: ShardOptions) -> dict[str, Any]:
    """What determines the output (the reuse check compares this)."""
    record = asdict(opts)
    for key in ("out", "overwrite"):
        record.pop(key)
    kind, _, arg = opts.source.partition(":")
    if arg:
        record["source"] = f"{kind}:{Path(arg).resolve()}"
    if kind == "fashion-mnist":
        record.pop("test_fraction")
    return {"format": FORMAT_VERSION, **record}


def shards_complete(opts: ShardOptions) -> bool:
    """True when OUT holds a finished write with the same arguments and every listed shard exists."""
    out = Path(opts.out)
    try:
        if json.loads((out / "make_shards.json").read_text()) != _args_record(opts):
            return False
        json.loads((out / "summary.json").read_text())
        for split in SPLITS:
            sizes = json.loads((out / split / "sizes.json").read_text())
            if not all((out / split / name).is_file() for name in sizes):
                return False
    except (OSError, ValueError):
        return False
    return True


def make_shards(opts: ShardOptions,
                progress: Optional[Callable[[str, int], ProgressBar]] = None) -> dict[str, dict[str, int]]:
    """Write OUT (see module doc) and return the summary; reuses a complete OUT unless `overwrite`.
    `progress(split, total)` makes a progress bar (e.g. tqdm) per split."""
    out = Path(opts.out)
    if opts.samples_per_shard < 1:
        raise ValueError(f"--samples-per-shard {opts.samples_per_shard} must be ≥ 1")
    if not opts.overwrite and shards_complete(opts):
        log.info("shards in %s are up to date (pass --overwrite to rewrite)", out)
        return json.loads((out / "summary.json").read_text())
    source = open_source(opts)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "make_shards.json", "classnames.txt"):
        (out / stale).unlink(missing_ok=True)
    summary = {}
    limits = {"train": opts.max_train, "test": opts.max_test}
    for split in SPLITS:
        records = _write_order(source.splits[split], limits[split], opts.seed, split)
        bar = progress(split, len(records)) if progress else _NoBar()
        try:
            summary[split] = write_split(records, out / split, split, opts.samples_per_shard, bar)
        finally:
            bar.close()
    if not any(s["written"] for s in summary.values()):
        raise EmptySourceError(f"none of the images in {opts.source} could be read — see the warnings above")
    if source.classnames:
        (out / "classnames.txt").write_text("\n".join(source.classnames) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "make_shards.json").write_text(json.dumps(_args_record(opts), indent=1) + "\n")
    return summary
