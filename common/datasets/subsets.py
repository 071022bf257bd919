"""What each stage trains on, cut from one training shard set (the regime EVA-CLIP is built for: many
images, fewer captions).

    image pool    every training image, its image bytes only (no caption, no label): stage 1's data
    caption set   a seeded subset of N image–caption pairs, the samples as they are (caption `txt` and/or
                  label `cls`, with the class names and templates beside them): stage 2's data, the same
                  N pairs for `--init` and every scratch control

The subset is a function of (source shards, N, seed) only: `np.random.default_rng([seed, CAPTION_PURPOSE])`
picks N of the source's samples (numbered in shard order), so every arm and every training seed reads the
same pairs, and a rerun writes the same bytes. Both are written by `shard_writer.write_split` (sorted
source order, mtime 0) and reused when `subset.json` matches.

    python -m common.datasets.subsets pool data/fashion-mnist/train data/fmnist_pool
    python -m common.datasets.subsets captions data/fashion-mnist/train data/fmnist_captions_1000 --n 1000
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common.data.shard_list import beside_shards
from common.datasets.shard_writer import TEMPLATES_FILE, write_split
from common.datasets.sources import read_samples, sample_record
from common.errors import ConfigError

CAPTION_PURPOSE = 3  # the seed stream of caption subsets (shard_writer's SEED_PURPOSE uses 0–2)
CLASS_FILES = ("classnames.txt", TEMPLATES_FILE)


class CaptionCountError(ConfigError):
    """`--captions N` asks for more pairs than the caption source holds."""


def subset_indices(total: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of the N pairs (of `total`) the caption set keeps: `[n] int64`, seed-stable.
    `CaptionCountError` (one line) when n > total or n < 1."""
    if not 1 <= n <= total:
        raise CaptionCountError(f"--captions {n} asks for more pairs than the {total} the caption source holds — "
                                f"use --captions {total} (all) or fewer" if n > total else
                                f"--captions {n} must be at least 1 (0 or 'all': every pair)")
    return np.sort(np.random.default_rng([seed, CAPTION_PURPOSE]).choice(total, size=n, replace=False))


def _up_to_date(out: Path, record: dict[str, Any]) -> bool:
    try:
        stored = json.loads((out / "subset.json").read_text())
        sizes = json.loads((out / "train" / "sizes.json").read_text())
    except (OSError, ValueError):
        return False
    same = {k: stored.get(k) for k in record} == record
    return same and all((out / "train" / name).is_file() for name in sizes)


def _write(shards: str, out: Path, record: dict[str, Any], samples_per_shard: int) -> dict[str, Any]:
    """`out/train/` from the samples `record` selects (`n`: a seeded subset; `kind`: which keys stay), then
    `out/subset.json` (written last: its presence marks a complete write)."""
    if _up_to_date(out, record):
        return json.loads((out / "subset.json").read_text())
    (out / "subset.json").unlink(missing_ok=True)
    samples = read_samples(shards)
    pool = record["kind"] == "image_pool"
    keep = range(len(samples)) if record["n"] is None else subset_indices(len(samples), record["n"], record["seed"])
    records = [sample_record(int(i), samples[int(i)], keep_text=not pool) for i in keep]
    written = write_split(records, out / "train", "train", samples_per_shard)["written"]
    classnames = None if pool else beside_shards(shards, "classnames.txt")
    for name in CLASS_FILES if classnames is not None else ():
        if (classnames.parent / name).is_file():
            shutil.copyfile(classnames.parent / name, out / name)
    record = dict(record, written=written, of=len(samples))
    (out / "subset.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def write_image_pool(shards: str, out: Path, samples_per_shard: int = 5000) -> dict[str, Any]:
    """Stage 1's image pool: every sample of `shards`, its image bytes only (no `txt`, no `cls`), in
    `out/train/`. Returns `subset.json`'s record (`written`: images)."""
    record = {"source": str(Path(shards).resolve()), "kind": "image_pool", "n": None, "seed": None}
    return _write(shards, out, record, samples_per_shard)


def write_caption_set(shards: str, out: Path, n: Optional[int], seed: int = 0,
                      samples_per_shard: int = 5000) -> dict[str, Any]:
    """Stage 2's caption set: `n` pairs of `shards` picked by `subset_indices(total, n, seed)` (None: all),
    samples as they are, in `out/train/`, with the source's class names and templates beside them.
    `CaptionCountError` when n exceeds the source."""
    record = {"source": str(Path(shards).resolve()), "kind": "caption_set", "n": n, "seed": seed}
    return _write(shards, out, record, samples_per_shard)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["pool", "captions"])
    parser.add_argument("shards", help="the training shards (a folder, pattern or comma list)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=None, help="captions: how many pairs (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="captions: the subset's seed")
    args = parser.parse_args(argv)
    try:
        record = (write_image_pool(args.shards, args.out) if args.kind == "pool" else
                  write_caption_set(args.shards, args.out, args.n, args.seed))
    except (CaptionCountError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
