"""BEiT/EVA block-wise masking of a patch grid.

`BlockMaskGenerator(grid, num_masked)(rng)` returns a bool `[H, W]` mask (row-major, the order of timm's
patch tokens, so `mask.reshape(-1)` indexes tokens) with EXACTLY `num_masked` cells set:

1. BEiT's loop: draw a rectangle with area ~ U(min_block, cap) (cap = min(remaining, max_block)) and a
   log-uniform aspect ratio; place it uniformly; accept it when it masks between 1 and `remaining`
   new cells. A round gives up after 10 attempts without progress, which ends the loop.
2. Our addition: BEiT would stop short of the target there; we fill the remainder with uniformly random
   unmasked cells so that every sample masks the same number of tokens (a fixed token budget per batch,
   and the loss is averaged over an equal count per sample). In practice the fill covers a few cells.

All randomness comes from the numpy `Generator` passed in (no global RNG), drawn in chunks so that one
call costs a handful of Generator calls; see `scripts/bench/bench_masking.py`.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from common.errors import ConfigError

ATTEMPTS_PER_BLOCK = 10  # BEiT's attempts per rectangle before giving up
_CHUNK = 32  # uniforms drawn per Generator call


def num_masked_for_ratio(grid: tuple[int, int], ratio: float) -> int:
    """`round(ratio * H * W)`; `ConfigError` unless it masks at least 1 patch and leaves at least 1."""
    total = _check_grid(grid)
    n = int(round(ratio * total))
    if not 1 <= n < total:
        raise ConfigError(f"mask.ratio={ratio} masks {n} of the {total} patches of a {grid[0]}x{grid[1]} grid — "
                          f"choose a ratio in (0, 1) that masks at least 1 and leaves at least 1 (or use a larger image)")
    return n


def check_mask_shape(min_block: int, max_block: Optional[int], aspect: tuple[float, float]) -> None:
    """`ConfigError` for block sizes or an aspect range BEiT's block sampler cannot use."""
    if min_block < 1:
        raise ConfigError(f"mask.min_block={min_block} must be >= 1")
    if max_block is not None and max_block < min_block:
        raise ConfigError(f"mask.max_block={max_block} must be >= mask.min_block={min_block} (or null)")
    if not 0.0 < aspect[0] <= aspect[1]:
        raise ConfigError(f"mask.aspect={tuple(aspect)} must be (low, high) with 0 < low <= high")


def _check_grid(grid: tuple[int, int]) -> int:
    if len(grid) != 2 or min(grid) < 1:
        raise ConfigError(f"patch grid {grid} must be two positive ints (set by data.image_size / patch size)")
    return int(grid[0]) * int(grid[1])


class BlockMaskGenerator:
    """Block-wise masks of a `grid = (H, W)` patch grid: `__call__(rng) -> bool [H, W]`, `num_masked` set."""

    def __init__(self, grid: tuple[int, int], num_masked: int, min_block: int = 4,
                 max_block: Optional[int] = None, aspect_range: tuple[float, float] = (0.3, 1 / 0.3)):
        total = _check_grid(grid)
        if not 1 <= num_masked < total:
            raise ConfigError(f"{num_masked} masked patches do not fit a {grid[0]}x{grid[1]} grid "
                              f"(need 1..{total - 1}) — lower mask.ratio or raise data.image_size")
        check_mask_shape(min_block, max_block, aspect_range)
        max_block = num_masked if max_block is None else max_block  # BEiT's default
        lo, hi = aspect_range
        self.grid = (int(grid[0]), int(grid[1]))
        self.num_masked, self.min_block, self.max_block = num_masked, min_block, max_block
        self.log_aspect = (math.log(lo), math.log(hi))

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator(grid={self.grid}, num_masked={self.num_masked}, min_block={self.min_block}, "
                f"max_block={self.max_block}, aspect=({math.exp(self.log_aspect[0]):.3g}, "
                f"{math.exp(self.log_aspect[1]):.3g}))")

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """A fresh mask: bool `[H, W]` with exactly `num_masked` True cells."""
        mask = np.zeros(self.grid, dtype=bool)
        uniforms = _UniformStream(rng)
        count = 0
        while count < self.num_masked:
            added = self._place_block(mask, self.num_masked - count, uniforms)
            if added == 0:
                break
            count += added
        if count < self.num_masked:
            free = np.flatnonzero(~mask)
            mask.flat[rng.choice(free, size=self.num_masked - count, replace=False)] = True
        return mask

    def _place_block(self, mask: np.ndarray, remaining: int, uniforms: "_UniformStream") -> int:
        """BEiT's `_mask`: up to 10 attempts to add one rectangle; returns the number of new cells."""
        height, width = self.grid
        cap = min(remaining, self.max_block)
        a_lo, a_hi = self.log_aspect
        for _ in range(ATTEMPTS_PER_BLOCK):
            u_area, u_aspect, u_top, u_left = uniforms.take4()
            area = self.min_block + (cap - self.min_block) * u_area  # BEiT: uniform(min, cap), either order
            aspect = math.exp(a_lo + (a_hi - a_lo) * u_aspect)
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (1 <= h <= height and 1 <= w <= width):
                continue
            top, left = int(u_top * (height - h + 1)), int(u_left * (width - w + 1))
            block = mask[top:top + h, left:left + w]
            new = h * w - int(np.count_nonzero(block))
            if 0 < new <= remaining:
                block[...] = True
                return new
        return 0


class _UniformStream:
    """Uniforms in [0, 1) from `rng`, drawn `_CHUNK` x 4 at a time (one Generator call per chunk)."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.buf, self.i = rng, [], 0

    def take4(self) -> list[float]:
        if self.i >= len(self.buf):
            self.buf, self.i = self.rng.random((_CHUNK, 4)).tolist(), 0
        self.i += 1
        return self.buf[self.i - 1]
