"""common/datasets/fashion_mnist.py: a damaged IDX file is a clear error."""
from __future__ import annotations

import gzip

import numpy as np
import pytest

from common.datasets.fashion_mnist import load_split


def test_corrupt_idx_file_is_a_clear_error(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(tmp_path / name, "wb") as f:
            f.write(np.arange(64, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="corrupt Fashion-MNIST file .*magic"):
        load_split(tmp_path, "test")
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_split(tmp_path, "test")
