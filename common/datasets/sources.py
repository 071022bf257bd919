"""The sources scripts/make_shards.py reads, as records that load one encoded image each.

    fashion-mnist[:ROOT]   the official idx files; raw arrays, PNG-encoded (the only re-encode by default)
    folder:PATH            PATH/<class name>/**/<image>; class ids follow the sorted folder names
    csv:FILE               rows of (image path, caption); columns named or the first two; rows that repeat
                           an image add captions to it
    shards:SPEC            existing webdataset shards (img2dataset's, ours): image bytes, `cls` and `txt` as
                           they are, class names from a `classnames.txt` beside them
    images:PATH            every image under PATH, no label, no caption, all in the train split: an image
                           pool for stage 1
    imagefolder-val:PATH   PATH/<synset>/<image> (ImageNet's val layout) with a `--classnames` mapping file
                           (`SYNSET name` a line; its line number is the label) or `openai_imagenet`
                           (open_clip's 1000 ImageNet class names, in sorted-synset order)

Files keep their encoded bytes (JPEG, PNG and WebP as they are, other formats become PNG) unless `resize`
is given: then images whose shorter side exceeds it are scaled down to it and re-encoded (JPEG and WebP
at quality 95, the rest PNG). Every file is decoded once to catch bad images.
"""
from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageOps

SPLITS = ("train", "test")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}
PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"}
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # PIL format → the sample key it is stored under
SEED_PURPOSE = {"holdout": 0, "train": 1, "test": 2}
EncodedImage = tuple[str, bytes]  # (sample key: png | jpg | webp, encoded bytes)


class EmptySourceError(ValueError):
    """The source holds no images at all."""


@dataclass
class Record:
    """One source sample; `load()` returns its encoded image or raises on a bad image. `captions`: one or
    more (several: one drawn per training sample)."""
    index: int
    load: Callable[[], EncodedImage]
    label: Optional[int] = None
    captions: tuple[str, ...] = ()


@dataclass
class Source:
    splits: dict[str, list[Record]]  # "train" and "test", or "test" alone for an eval set
    classnames: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CsvColumns:
    """Column names of a CSV source ("": the first column holds images, the second captions)."""
    image: str = ""
    caption: str = ""


# ---- encoding ------------------------------------------------------------------------------------
def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of `image` at its own size; modes PNG cannot hold become RGB(A)."""
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _encode_like(image: Image.Image, fmt: str) -> EncodedImage:
    """A resized image in its source's format where that is JPEG or WebP (quality 95), else PNG."""
    if fmt not in ("JPEG", "WEBP"):
        return "png", encode_png(image)
    buffer = io.BytesIO()
    image.convert("RGB" if image.mode not in ("RGB", "L") else image.mode).save(buffer, format=fmt, quality=95)
    return KEPT_FORMATS[fmt], buffer.getvalue()


def _array_png(images: np.ndarray, i: int) -> EncodedImage:
    return "png", encode_png(Image.fromarray(np.ascontiguousarray(images[i])))  # [H, W] uint8 → mode "L"


def file_image(path: Path, resize: Optional[int] = None) -> EncodedImage:
    """The file's own bytes (JPEG/PNG/WebP), or PNG for other formats, or a downscaled re-encode when its
    shorter side exceeds `resize` (EXIF orientation applied first). Decodes fully: bad files raise."""
    with Image.open(path) as image:
        image.load()
        fmt = image.format
        if resize is not None and min(image.size) > resize:
            upright = ImageOps.exif_transpose(image)
            scale = resize / min(upright.size)
            size = (max(1, round(upright.width * scale)), max(1, round(upright.height * scale)))
            return _encode_like(upright.resize(size, Image.Resampling.BICUBIC), fmt)
        if fmt in KEPT_FORMATS:
            return KEPT_FORMATS[fmt], path.read_bytes()
        return "png", encode_png(ImageOps.exif_transpose(image))


# ---- sources -------------------------------------------------------------------------------------
def holdout(records: list[Record], test_fraction: float, seed: int) -> dict[str, list[Record]]:
    """Seeded random holdout: floor(fraction·N + 0.5) records go to test, in source order."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"--test-fraction {test_fraction} must be in [0, 1)")
    order = np.random.default_rng([seed, SEED_PURPOSE["holdout"]]).permutation(len(records))
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


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _class_records(class_dirs: list[Path], labels: list[int], resize: Optional[int]) -> list[Record]:
    records: list[Record] = []
    for label, class_dir in zip(labels, class_dirs):
        records += [Record(len(records) + i, functools.partial(file_image, p, resize), label)
                    for i, p in enumerate(_image_files(class_dir))]
    return records


def _class_dirs(path: Path, kind: str) -> list[Path]:
    if not path.is_dir():
        raise FileNotFoundError(f"{kind} source {path} is not a directory")
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))


def folder_source(path: Path, test_fraction: float, seed: int, resize: Optional[int] = None) -> Source:
    """PATH/<class>/**/<image>: class ids follow the sorted folder names."""
    class_dirs = _class_dirs(path, "folder")
    records = _class_records(class_dirs, list(range(len(class_dirs))), resize)
    if not records:
        raise EmptySourceError(f"no images found in folder:{path} — expected {path}/<class name>/<image>"
                               f"{{{','.join(sorted(IMAGE_EXTS))}}}")
    return Source(holdout(records, test_fraction, seed), [d.name for d in class_dirs])


def images_source(path: Path, resize: Optional[int] = None) -> Source:
    """PATH/**/<image>, unlabelled and uncaptioned, one "train" split (stage 1's image pool)."""
    if not path.is_dir():
        raise FileNotFoundError(f"images source {path} is not a directory")
    records = [Record(i, functools.partial(file_image, p, resize)) for i, p in enumerate(_image_files(path))]
    if not records:
        raise EmptySourceError(f"no images found under images:{path}")
    return Source({"train": records})


def read_samples(shards: str) -> list[dict[str, Any]]:
    """Every sample of `shards` (a folder, pattern or list) in shard order, undecoded: `{image key: bytes,
    "cls"?: int, "txt"?: str}`; samples without an image are left out."""
    import webdataset as wds

    from common.data.samples import IMAGE_KEYS
    from common.data.shard_list import resolve_shards
    out = []
    for raw in wds.WebDataset(resolve_shards(shards), shardshuffle=False, empty_check=False):
        key = next((k for k in IMAGE_KEYS if k in raw), None)
        if key is None:
            continue
        sample: dict[str, Any] = {key: raw[key]}
        if "cls" in raw:
            sample["cls"] = int(raw["cls"])
        if "txt" in raw:
            sample["txt"] = raw["txt"].decode("utf-8")
        out.append(sample)
    return out


def sample_record(index: int, sample: dict[str, Any], keep_text: bool = True) -> Record:
    """A `read_samples` sample as a record that loads its bytes as they are (`keep_text`: its label and
    captions too)."""
    key = next(k for k in sample if k not in ("cls", "txt"))
    captions = tuple(line for line in sample.get("txt", "").splitlines() if line.strip()) if keep_text else ()
    return Record(index, lambda: (key, sample[key]), sample.get("cls") if keep_text else None, captions)


def shards_source(spec: str, test_fraction: float, seed: int) -> Source:
    """Existing webdataset shards re-split: a seeded holdout, samples as they are."""
    from common.data.shard_list import read_classnames
    records = [sample_record(i, s) for i, s in enumerate(read_samples(spec))]
    if not records:
        raise EmptySourceError(f"no samples with an image in shards:{spec}")
    return Source(holdout(records, test_fraction, seed), read_classnames(spec))


def read_synset_mapping(spec: str, synsets: list[str]) -> tuple[dict[str, int], list[str]]:
    """({synset: label}, class names in label order) from a mapping file (`SYNSET name…` a line) or, for
    `openai_imagenet`, open_clip's 1000 ImageNet names against the 1000 sorted synset folders."""
    if spec == "openai_imagenet":
        from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
        if len(synsets) != len(IMAGENET_CLASSNAMES):
            raise ValueError(f"--classnames openai_imagenet needs the {len(IMAGENET_CLASSNAMES)} ImageNet synset "
                             f"folders, found {len(synsets)} — pass a mapping file (lines 'SYNSET name') instead")
        return {s: i for i, s in enumerate(synsets)}, list(IMAGENET_CLASSNAMES)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--classnames {spec} does not exist — give a mapping file ('SYNSET name' a line) "
                                "or openai_imagenet")
    lines = [line.strip().split(maxsplit=1) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if any(len(parts) != 2 for parts in lines):
        raise ValueError(f"--classnames {spec}: every line must be 'SYNSET class name' (e.g. 'n01440764 tench')")
    return {parts[0]: i for i, parts in enumerate(lines)}, [parts[1] for parts in lines]


def imagefolder_val_source(path: Path, classnames: str, resize: Optional[int] = None) -> Source:
    """PATH/<synset>/<image> → one labelled "test" split; labels and names from `read_synset_mapping`."""
    if not classnames:
        raise ValueError("--source imagefolder-val: needs --classnames FILE ('SYNSET name' a line) or "
                         "--classnames openai_imagenet")
    class_dirs = _class_dirs(path, "imagefolder-val")
    label_of, names = read_synset_mapping(classnames, [d.name for d in class_dirs])
    unknown = [d.name for d in class_dirs if d.name not in label_of]
    if unknown:
        raise ValueError(f"folder {unknown[0]} of imagefolder-val:{path} is not in --classnames {classnames} "
                         f"({len(unknown)} unknown) — use the synset mapping of this set")
    records = _class_records(class_dirs, [label_of[d.name] for d in class_dirs], resize)
    if not records:
        raise EmptySourceError(f"no images found in imagefolder-val:{path} — expected {path}/<synset>/<image>")
    return Source({"test": records}, names)


def _csv_column(header: list[str], name: str, default: int, flag: str, path: Path) -> int:
    if not name:
        return default
    if name not in header:
        raise ValueError(f"csv:{path} has no column '{name}' — {flag} must name one of: {', '.join(header)}")
    return header.index(name)


def _cell(row: list[str], column: int) -> str:
    return row[column].strip() if column < len(row) else ""


def _is_header(row: list[str], base: Path) -> bool:
    first = row[0].strip()
    return Path(first).suffix.lower() not in IMAGE_EXTS and not (base / first).is_file()


def csv_source(path: Path, test_fraction: float, seed: int, columns: CsvColumns = CsvColumns(),
               resize: Optional[int] = None) -> Source:
    """CSV rows (image path, caption), header optional unless columns are named; relative paths resolve
    against the CSV's folder; rows naming the same image give it several captions (in row order)."""
    if not path.is_file():
        raise FileNotFoundError(f"csv source {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    header = [cell.strip() for cell in rows[0]] if rows else []
    has_header = bool(rows) and (bool(columns.image or columns.caption) or _is_header(rows[0], path.parent))
    image_col = _csv_column(header, columns.image, 0, "--image-column", path)
    caption_col = _csv_column(header, columns.caption, 1, "--caption-column", path)
    body = rows[1:] if has_header else rows
    for col, what, flag in ((image_col, "image", "--image-column"), (caption_col, "caption", "--caption-column")):
        if body and not any(_cell(row, col) for row in body):
            name = header[col] if has_header and col < len(header) else f"#{col + 1}"
            raise ValueError(f"csv:{path}: the {what} column '{name}' is empty in every row — name the column "
                             f"that holds them with {flag}")
    captions: dict[str, list[str]] = {}
    for row in body:
        if _cell(row, image_col):
            found = captions.setdefault(_cell(row, image_col), [])
            if _cell(row, caption_col):
                found.append(" ".join(_cell(row, caption_col).split()))  # one line: txt holds one caption a line
    records = [Record(i, functools.partial(file_image, path.parent / image, resize), None, tuple(texts))
               for i, (image, texts) in enumerate(captions.items())]  # an absolute image path stays absolute
    if not records:
        raise EmptySourceError(f"no images listed in csv:{path} — expected rows 'image path, caption'")
    return Source(holdout(records, test_fraction, seed))
