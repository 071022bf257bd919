"""Write webdataset shards for training and evaluation
(layout and determinism: common/datasets/shard_writer.py).

    python scripts/make_shards.py --source fashion-mnist --out data/fashion-mnist
    python scripts/make_shards.py --source folder:PATH --out data/mine      # PATH/<class>/<image>
    python scripts/make_shards.py --source csv:captions.csv --out data/mine # rows: image path, caption
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from tqdm import tqdm

from common.datasets.shard_writer import ShardOptions, make_shards, shards_complete


def parse_args(argv: list[str] | None) -> ShardOptions:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="fashion-mnist[:ROOT] | folder:PATH | csv:FILE")
    parser.add_argument("--out", required=True, help="output folder (train/, test/, classnames.txt, …)")
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    parser.add_argument("--max-train", type=int, default=None, help="seeded random subset of the train split")
    parser.add_argument("--max-test", type=int, default=None, help="seeded random subset of the test split")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="holdout for folder/csv sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rewrite even if OUT is complete")
    args = parser.parse_args(argv)
    return ShardOptions(**{k: v for k, v in vars(args).items()})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    opts = parse_args(argv)
    if not opts.overwrite and shards_complete(opts):
        print(f"{opts.out}: up to date (--overwrite to rewrite)")
        return 0
    try:
        summary = make_shards(opts, progress=lambda split, total: tqdm(total=total, desc=split, unit="img"))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": opts.out, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
