"""A run's data, as both stages use it: the train and eval shard lists and class names of a `DataConfig`,
and this rank's loaders over them (`streams`)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from common.config.sections import DataConfig
from common.data.samples import MapSample
from common.data.shard_list import read_classnames, resolve_shards
from common.data.streams import make_eval_loader, make_train_loader


class RunData:
    """Shards of `cfg` for rank `rank` of `world_size`, `micro_batch` training samples per batch."""

    def __init__(self, cfg: DataConfig, rank: int, world_size: int, micro_batch: int):
        self.cfg, self.rank, self.world_size, self.micro_batch = cfg, rank, world_size, micro_batch
        self.train_urls = resolve_shards(cfg.train_shards)
        self.eval_urls = resolve_shards(cfg.eval_shards) if cfg.eval_shards else []
        self.classnames = read_classnames(cfg.train_shards)

    def train_batches(self, map_sample: MapSample, seed: int) -> Iterator[dict[str, Any]]:
        """This rank's endless, deterministic training stream (a function of `seed`)."""
        return make_train_loader(self.train_urls, map_sample, self.micro_batch, seed=seed, rank=self.rank,
                                 world_size=self.world_size, num_workers=self.cfg.num_workers,
                                 shuffle_buffer=self.cfg.shuffle_buffer)

    def eval_batches(self, map_sample: MapSample, final: bool) -> Iterable[dict[str, Any]]:
        """This rank's share of the eval split: the first `data.(final_)eval_max_samples` (0: all)."""
        return make_eval_loader(self.eval_urls, map_sample, self.cfg.eval_batch_size, rank=self.rank,
                                world_size=self.world_size, max_samples=self.cfg.eval_limit(final),
                                num_workers=self.cfg.num_workers)
