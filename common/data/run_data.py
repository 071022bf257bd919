"""A run's data, as both stages use it: the training sources (weighted shard lists with their class names),
the held-out split and the zero-shot sets of a `DataConfig` + `EvalConfig`, this rank's loaders over them
(`streams`), and the start-up checks that need the file system (`check_run_data`, from `validate_run`)."""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

from common.config.sections import DataConfig, EvalConfig
from common.data.eval_sets import ZeroShotSet, check_zeroshot_set, resolve_zeroshot_set
from common.data.samples import MapSample
from common.data.shard_list import read_classnames, require_one_contrastive_batch, resolve_shards
from common.data.streams import StreamSource, make_eval_loader, make_train_loader
from common.errors import ConfigError
from common.run_context import RunContext


def resolve_sources(cfg: DataConfig) -> list[StreamSource]:
    """The training sources of `data.train_shards`; ConfigError naming the source that matches no shard."""
    sources = []
    for i, source in enumerate(cfg.train_sources()):
        try:
            urls = resolve_shards(source.shards)
        except FileNotFoundError as err:
            if isinstance(cfg.train_shards, str):
                raise
            raise ConfigError(f"data.train_shards[{i}].shards={source.shards!r} matches no shard — fix the "
                              "path or pattern, or remove the source") from err
        sources.append(StreamSource(source.name, tuple(urls), source.weight))
    return sources


def resolve_zeroshot_sets(data: DataConfig, eval_cfg: EvalConfig) -> list[ZeroShotSet]:
    return [resolve_zeroshot_set(item, i, data.templates) for i, item in enumerate(eval_cfg.zeroshot)]


def check_run_data(data: DataConfig, eval_cfg: EvalConfig, run: RunContext) -> None:
    """Start-up checks (the stages' `validate_run`), before any model is built: every training source
    matches shards that hold one contrastive batch; every zero-shot set resolves and is labelled."""
    resolve_sources(data)
    figures = (f"{run.micro_batch} per process × contrastive_accum {run.contrastive_accum} × "
               f"{run.world_size} processes")
    require_one_contrastive_batch(",".join(s.shards for s in data.train_sources()), run.contrastive_batch, figures)
    for i, (item, zs) in enumerate(zip(eval_cfg.zeroshot, resolve_zeroshot_sets(data, eval_cfg))):
        check_zeroshot_set(item, i, zs)


class RunData:
    """Shards of `cfg` for rank `rank` of `world_size`, `micro_batch` training samples per batch.

    Class names: each training source's from its shards' classnames.txt (for captions made from labels);
    the held-out split's are the first training source's, else those beside `data.eval_shards` (zero-shot
    on the held-out split when its samples carry labels)."""

    def __init__(self, cfg: DataConfig, eval_cfg: EvalConfig, rank: int, world_size: int, micro_batch: int):
        self.cfg, self.rank, self.world_size, self.micro_batch = cfg, rank, world_size, micro_batch
        self.sources = resolve_sources(cfg)
        self.source_classnames = {s.name: read_classnames(s.shards) for s in cfg.train_sources()}
        self.eval_urls = resolve_shards(cfg.eval_shards) if cfg.eval_shards else []
        first = self.source_classnames[self.sources[0].name]
        self.classnames = first or (read_classnames(cfg.eval_shards) if cfg.eval_shards else [])
        self.zeroshot_sets = resolve_zeroshot_sets(cfg, eval_cfg)

    def train_classnames(self, meta: dict[str, Any]) -> Sequence[str]:
        """Class names of the source a training sample came from (`meta["source"]`; None: the only one)."""
        return self.source_classnames[meta.get("source") or self.sources[0].name]

    def train_batches(self, map_sample: MapSample, seed: int) -> Iterator[dict[str, Any]]:
        """This rank's endless, deterministic training stream (a function of `seed`)."""
        return make_train_loader(self.sources, map_sample, self.micro_batch, seed=seed, rank=self.rank,
                                 world_size=self.world_size, num_workers=self.cfg.num_workers,
                                 shuffle_buffer=self.cfg.shuffle_buffer)

    def eval_batches(self, map_sample: MapSample, final: bool,
                     urls: Sequence[str] | None = None) -> Iterable[dict[str, Any]]:
        """This rank's share of the held-out split (or of `urls`, a zero-shot set's shards): the first
        `data.(final_)eval_max_samples` (0: all)."""
        return make_eval_loader(list(urls) if urls is not None else self.eval_urls, map_sample,
                                self.cfg.eval_batch_size, rank=self.rank, world_size=self.world_size,
                                max_samples=self.cfg.eval_limit(final), num_workers=self.cfg.num_workers)
