"""Throughput of the block-wise mask generator (it runs once per sample in every data-loader worker).

`python scripts/bench/bench_masking.py [--seconds 1.0] [--ratio 0.4]` prints one JSON line per grid:
`{"masks_per_s": ..., "us_per_mask": ..., "grid": [14, 14], "ratio": 0.4, "num_masked": 78, ...}`.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from stage1_mim.masking import BlockMaskGenerator, num_masked_for_ratio


def bench(grid: tuple[int, int], ratio: float, seconds: float, seed: int = 0) -> dict:
    """Masks per second of one generator, single thread, over about `seconds` of wall time."""
    generator = BlockMaskGenerator(grid, num_masked_for_ratio(grid, ratio))
    rng = np.random.default_rng(seed)
    for _ in range(100):  # warm-up
        generator(rng)
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(200):
            generator(rng)
        n += 200
    return {"masks_per_s": round(n / elapsed, 1), "us_per_mask": round(1e6 * elapsed / n, 2),
            "grid": list(grid), "ratio": ratio, "num_masked": generator.num_masked, "masks": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--ratio", type=float, default=0.4)
    args = parser.parse_args()
    for grid in ((14, 14), (16, 16)):
        print(json.dumps(bench(grid, args.ratio, args.seconds)), flush=True)


if __name__ == "__main__":
    main()
