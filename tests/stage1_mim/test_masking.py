"""Block-wise mask generator: exact counts, real blocks, seeded determinism, config errors."""
from __future__ import annotations

import numpy as np
import pytest

from stage1_mim.masking import BlockMaskGenerator, num_masked_for_ratio


def _components(mask: np.ndarray) -> int:
    """4-connected components of the True cells."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        seen[start] = True
        while stack:
            i, j = stack.pop()
            for ni, nj in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= ni < mask.shape[0] and 0 <= nj < mask.shape[1] and mask[ni, nj] and not seen[ni, nj]:
                    seen[ni, nj] = True
                    stack.append((ni, nj))
    return count


@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.4), ((16, 16), 0.4), ((14, 14), 0.75),
                                        ((7, 9), 0.3), ((4, 4), 0.5), ((2, 2), 0.25), ((1, 5), 0.6)])
def test_mask_has_exactly_num_masked_cells(grid, ratio):
    generator = BlockMaskGenerator(grid, num_masked_for_ratio(grid, ratio))
    rng = np.random.default_rng(0)
    for _ in range(200):
        mask = generator(rng)
        assert mask.shape == grid and mask.dtype == np.bool_
        assert int(mask.sum()) == generator.num_masked


def test_num_masked_for_ratio_rounds():
    assert num_masked_for_ratio((14, 14), 0.4) == 78
    assert num_masked_for_ratio((16, 16), 0.4) == 102


def test_masked_cells_form_few_blocks():
    generator = BlockMaskGenerator((14, 14), num_masked_for_ratio((14, 14), 0.15))  # 29 cells
    rng = np.random.default_rng(1)
    components = [_components(generator(rng)) for _ in range(100)]
    assert np.mean(components) < generator.num_masked / 6  # random cells would give ~25 components


def test_max_block_bounds_each_block():
    generator = BlockMaskGenerator((14, 14), 60, min_block=4, max_block=8)
    rng = np.random.default_rng(2)
    assert np.mean([_components(generator(rng)) for _ in range(50)]) > 3


def test_same_seed_same_masks_other_seed_differs():
    generator = BlockMaskGenerator((14, 14), 78)
    first = [generator(np.random.default_rng(7)) for _ in range(3)]
    again = [generator(np.random.default_rng(7)) for _ in range(3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(8)
    assert any(not np.array_equal(generator(rng_a), generator(rng_b)) for _ in range(3))


def test_global_numpy_rng_is_untouched():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    BlockMaskGenerator((14, 14), 78)(np.random.default_rng(0))
    assert np.random.random() == expected


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_ratio_outside_open_interval_names_config_key(ratio):
    with pytest.raises(ValueError, match=r"mask\.ratio"):
        num_masked_for_ratio((14, 14), ratio)


def test_grid_too_small_names_config_key():
    with pytest.raises(ValueError, match=r"mask\.ratio"):
        num_masked_for_ratio((1, 1), 0.4)
    with pytest.raises(ValueError, match=r"mask\.ratio"):
        num_masked_for_ratio((2, 2), 0.1)  # rounds to 0 masked patches
    with pytest.raises(ValueError, match=r"mask\.ratio"):
        BlockMaskGenerator((2, 2), 4)


def test_bad_block_and_aspect_settings_name_config_keys():
    with pytest.raises(ValueError, match=r"mask\.min_block"):
        BlockMaskGenerator((14, 14), 78, min_block=0)
    with pytest.raises(ValueError, match=r"mask\.max_block"):
        BlockMaskGenerator((14, 14), 78, min_block=4, max_block=2)
    with pytest.raises(ValueError, match=r"mask\.aspect"):
        BlockMaskGenerator((14, 14), 78, aspect_range=(2.0, 0.5))
