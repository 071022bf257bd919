"""common/data/shard_list.py: shard specs (a folder, braces, a comma list) resolved to files, class names and
shard sizes beside them, and the check that a run's shards hold one contrastive batch."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.data import shard_list
from common.errors import ConfigError
from tests.support.shards import N_SHARDS, PER_SHARD


def test_resolve_shards_folder_brace_and_comma_list(id_shards):
    urls = shard_list.resolve_shards(str(id_shards))
    assert [Path(u).name for u in urls] == [f"shard-{i:06d}.tar" for i in range(N_SHARDS)]
    assert shard_list.resolve_shards(f"{id_shards}/shard-{{000001..000002}}.tar") == urls[1:3]
    assert shard_list.resolve_shards(f"{urls[3]},{id_shards}/shard-{{000000,000001}}.tar") == [urls[3], *urls[:2]]
    assert shard_list.read_classnames(str(id_shards)) == ["a", "b", "c"]
    assert sum(shard_list.shard_sizes(urls)) == N_SHARDS * PER_SHARD


def test_resolve_shards_no_match_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no shards match '.*nothing' — run scripts/make_shards.py"):
        shard_list.resolve_shards(str(tmp_path / "nothing"))


def test_shards_holding_less_than_one_contrastive_batch_are_a_config_error(id_shards):
    shard_list.require_one_contrastive_batch(str(id_shards), 40, '20 per process × 2 processes')  # exactly 40 samples
    with pytest.raises(ConfigError, match="fewer than one contrastive batch"):
        shard_list.require_one_contrastive_batch(str(id_shards), 48, '16 per process × 3 processes')
