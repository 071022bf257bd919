"""Write webdataset shards for training and evaluation (sources: common/datasets/sources.py; layout
and determinism: common/datasets/shard_writer.py). Images keep their encoded bytes unless --resize.

    python scripts/make_shards.py --source fashion-mnist --out data/fashion-mnist
    python scripts/make_shards.py --source folder:PATH --out data/mine      # PATH/<class>/<image>
    python scripts/make_shards.py --source csv:captions.csv --out data/mine --workers 8 \
        --image-column filepath --caption-column title                       # rows: image path, caption
    python scripts/make_shards.py --source shards:/data/laion --out data/mine  # existing shards, re-split
    python scripts/make_shards.py --source images:/data/photos --out data/pool --test-fraction 0  # images only
    python scripts/make_shards.py --source imagefolder-val:/data/imagenet/val --classnames openai_imagenet \
        --templates openai_imagenet --layout clip_benchmark --out data/imagenet-val   # a zero-shot set
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
    parser.add_argument("--source", required=True,
                        help="fashion-mnist[:ROOT] | folder:PATH | csv:FILE | shards:SPEC | images:PATH (no labels, no "
                             "captions: a stage-1 image pool) | imagefolder-val:PATH")
    parser.add_argument("--out", required=True, help="output folder (train/, test/, classnames.txt, …)")
    parser.add_argument("--samples-per-shard", type=int, default=5000)
    parser.add_argument("--max-train", type=int, default=None, help="seeded random subset of the train split")
    parser.add_argument("--max-test", type=int, default=None, help="seeded random subset of the test split")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="holdout for folder/csv sources")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="rewrite even if OUT is complete")
    parser.add_argument("--workers", type=int, default=1, help="image-loading processes (same output for any)")
    parser.add_argument("--resize", type=int, default=None,
                        help="downscale images whose shorter side exceeds N (re-encodes them); default: keep bytes")
    parser.add_argument("--image-column", default="", help="csv: column of image paths (default: the first)")
    parser.add_argument("--caption-column", default="", help="csv: column of captions (default: the second)")
    parser.add_argument("--classnames", default="",
                        help="imagefolder-val: mapping file ('SYNSET class name' a line) or openai_imagenet")
    parser.add_argument("--templates", default="simple",
                        help="labelled sources: template set (openai_imagenet, simple, …) or file written beside "
                             "the shards as zeroshot_classification_templates.txt")
    parser.add_argument("--layout", choices=["evaclip", "clip_benchmark"], default="evaclip",
                        help="clip_benchmark: shards 0.tar, 1.tar, … + nshards.txt (its wds/ layout)")
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
