"""Write webdataset `.tar` shards from a source of `common/datasets/sources.py`.

Layout under OUT (`layout="evaclip"`; `"clip_benchmark"` names shards `0.tar, 1.tar, …` and adds
`SPLIT/nshards.txt`, the layout clip_benchmark's `wds/` datasets read):
    train/shard-000000.tar …   test/shard-000000.tar …   (per sample: __key__, png|jpg|webp, cls?, txt?)
    train/sizes.json, test/sizes.json    {shard file name: samples}
    classnames.txt                        one class name per line, line i = label i (labelled sources)
    zeroshot_classification_templates.txt one prompt template per line, `{c}` = the class name (labelled)
    summary.json                          {split: {"written": n, "skipped_bad_image": k}}
    make_shards.json                      the arguments that produced OUT (reuse check)
An eval-only source (imagefolder-val) writes `test/` alone. `txt` holds one caption per line.

Deterministic for a seed: holdout, subsample and write order come from `np.random.default_rng([seed,
purpose])`, encoding is deterministic, images are loaded by `workers` processes but written in that
order, and every tar header has mtime 0 and fixed owner/mode; so the same seed gives byte-identical
shards for any number of workers.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Protocol, Union

import numpy as np

from common.datasets.sources import (SEED_PURPOSE, CsvColumns, EmptySourceError, EncodedImage, Record, Source,
                                     csv_source, fashion_mnist_source, folder_source, imagefolder_val_source,
                                     images_source, shards_source)

log = logging.getLogger("evaclip")

FORMAT_VERSION = 2
TEMPLATES_FILE = "zeroshot_classification_templates.txt"
SHARD_NAMES = {"evaclip": "shard-%06d.tar", "clip_benchmark": "%d.tar"}
Layout = Literal["evaclip", "clip_benchmark"]


@dataclass
class ShardOptions:
    source: str                       # fashion-mnist[:ROOT] | folder:PATH | csv:FILE | shards:SPEC | images:PATH
                                      # | imagefolder-val:PATH
    out: str
    samples_per_shard: int = 5000
    max_train: Optional[int] = None   # None: all
    max_test: Optional[int] = None
    test_fraction: float = 0.1        # holdout for folder/csv sources
    seed: int = 0
    overwrite: bool = False
    workers: int = 1                  # image-loading processes (the output does not depend on it)
    resize: Optional[int] = None      # downscale images whose shorter side exceeds this, re-encoding them
    image_column: str = ""            # csv: the column of image paths ("": the first)
    caption_column: str = ""          # csv: the column of captions ("": the second)
    classnames: str = ""              # imagefolder-val: 'SYNSET name' mapping file, or openai_imagenet
    templates: str = "simple"         # labelled sources: the template set or file written beside the shards
    layout: Layout = "evaclip"


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


class NoBar:
    """A progress bar that shows nothing (what `make_shards` uses when given no `progress`)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def open_source(opts: ShardOptions) -> Source:
    kind, _, arg = opts.source.partition(":")
    if kind == "fashion-mnist":
        return fashion_mnist_source(arg or None)
    if kind == "folder" and arg:
        return folder_source(Path(arg), opts.test_fraction, opts.seed, opts.resize)
    if kind == "csv" and arg:
        columns = CsvColumns(opts.image_column, opts.caption_column)
        return csv_source(Path(arg), opts.test_fraction, opts.seed, columns, opts.resize)
    if kind == "imagefolder-val" and arg:
        return imagefolder_val_source(Path(arg), opts.classnames, opts.resize)
    if kind == "images" and arg:
        return images_source(Path(arg), opts.resize)
    if kind == "shards" and arg:
        return shards_source(arg, opts.test_fraction, opts.seed)
    raise ValueError(f"unknown --source '{opts.source}' — use fashion-mnist, folder:PATH, csv:FILE, shards:SPEC, "
                     "images:PATH or imagefolder-val:PATH")


# ---- loading (in worker processes) ---------------------------------------------------------------
Loaded = Union[EncodedImage, str]  # the encoded image, or the error that made it a bad image
_POOL_RECORDS: list[Record] = []  # what forked workers load from (inherited, never pickled)


def _load(record: Record) -> Loaded:
    try:
        return record.load()
    except Exception as err:  # PIL raises many types for corrupt files
        return repr(err)


def _load_at(index: int) -> Loaded:
    return _load(_POOL_RECORDS[index])


def load_in_order(records: list[Record], workers: int) -> Iterator[Loaded]:
    """`_load` of every record, in order, by `workers` forked processes (1: in this process)."""
    global _POOL_RECORDS
    if workers <= 1 or len(records) < 2:
        yield from map(_load, records)
        return
    _POOL_RECORDS = records
    try:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(_load_at, range(len(records)), chunksize=16)
    finally:
        _POOL_RECORDS = []


# ---- writing -------------------------------------------------------------------------------------
def _write_order(records: list[Record], limit: Optional[int], seed: int, split: str) -> list[Record]:
    """A seeded random subset of `limit` records (all when None), in seeded random order."""
    order = np.random.default_rng([seed, SEED_PURPOSE[split]]).permutation(len(records))
    if limit is not None:
        order = order[:max(limit, 0)]
    return [records[i] for i in order]


def write_split(records: list[Record], out_dir: Path, split: str, samples_per_shard: int,
                bar: Optional[ProgressBar] = None, workers: int = 1, layout: Layout = "evaclip") -> dict[str, int]:
    """Load and write `records` in the given order; bad images are skipped and counted."""
    import webdataset as wds  # imports torch: kept off the fast "already complete" path
    bar = bar or NoBar()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in [*out_dir.glob("*.tar"), out_dir / "sizes.json", out_dir / "nshards.txt"]:
        old.unlink(missing_ok=True)
    writer, sizes, skipped = None, {}, 0
    try:
        for record, loaded in zip(records, load_in_order(records, workers)):
            bar.update(1)
            if isinstance(loaded, str):
                skipped += 1
                log.warning("skipping bad image #%d (%s split): %s", record.index, split, loaded)
                continue
            key, payload = loaded
            sample: dict[str, Any] = {"__key__": f"{split}-{record.index:07d}", key: payload}
            if record.label is not None:
                sample["cls"] = record.label
            if record.captions:
                sample["txt"] = "\n".join(record.captions)
            if writer is None:  # int mtime: a float one makes tarfile add a PAX header per member (2× size)
                writer = wds.ShardWriter(str(out_dir / SHARD_NAMES[layout]), maxcount=samples_per_shard,
                                         verbose=0, mtime=0, user="evaclip", group="evaclip")
            writer.write(sample)
            name = Path(writer.fname).name
            sizes[name] = sizes.get(name, 0) + 1
    finally:
        if writer is not None:
            writer.close()
    (out_dir / "sizes.json").write_text(json.dumps(sizes, indent=1) + "\n")
    if layout == "clip_benchmark":
        (out_dir / "nshards.txt").write_text(f"{len(sizes)}\n")
    return {"written": sum(sizes.values()), "skipped_bad_image": skipped}


def _template_lines(templates: str) -> list[str]:
    """The `--templates` set or file as lines of a template file (`{c}` where the class name goes)."""
    from common.data.templates import as_text, load_templates
    try:
        return [as_text(t) for t in load_templates(templates)]
    except OSError as err:
        raise FileNotFoundError(f"--templates {templates}: {err.strerror} — give a template set name or a "
                                "file (one template a line, with {c})") from None


def _write_class_files(out: Path, source: Source, templates: str) -> None:
    """classnames.txt and the templates file of a labelled source."""
    (out / "classnames.txt").write_text("\n".join(source.classnames) + "\n")
    (out / TEMPLATES_FILE).write_text("\n".join(_template_lines(templates)) + "\n")


def _args_record(opts: ShardOptions) -> dict[str, Any]:
    """What determines the output (the reuse check compares this; not the number of workers)."""
    record = asdict(opts)
    for key in ("out", "overwrite", "workers"):
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
        for split in json.loads((out / "summary.json").read_text()):
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
    if opts.workers < 1:
        raise ValueError(f"--workers {opts.workers} must be ≥ 1")
    if not opts.overwrite and shards_complete(opts):
        log.info("shards in %s are up to date (pass --overwrite to rewrite)", out)
        return json.loads((out / "summary.json").read_text())
    _template_lines(opts.templates)  # a bad --templates fails before any image is read
    source = open_source(opts)
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("summary.json", "make_shards.json", "classnames.txt", TEMPLATES_FILE):
        (out / stale).unlink(missing_ok=True)
    summary = {}
    limits = {"train": opts.max_train, "test": opts.max_test}
    for split, split_records in source.splits.items():
        records = _write_order(split_records, limits[split], opts.seed, split)
        bar = progress(split, len(records)) if progress else NoBar()
        try:
            summary[split] = write_split(records, out / split, split, opts.samples_per_shard, bar, opts.workers,
                                         opts.layout)
        finally:
            bar.close()
    if not any(s["written"] for s in summary.values()):
        raise EmptySourceError(f"none of the images in {opts.source} could be read — see the warnings above")
    if source.classnames:
        _write_class_files(out, source, opts.templates)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "make_shards.json").write_text(json.dumps(_args_record(opts), indent=1) + "\n")
    return summary
