"""Shard lists: a folder, brace pattern, glob or comma list → shard paths; per-shard sample counts from
`sizes.json`; class names from `classnames.txt` (the layout scripts/make_shards.py writes)."""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Optional

from braceexpand import braceexpand

from common.config.schema import ConfigError


def _split_top_level(spec: str) -> list[str]:
    """Split a comma list, keeping commas inside braces (`a{0,1}.tar,b.tar` → 2 items)."""
    items, depth, current = [], 0, ""
    for char in spec:
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    return [item.strip() for item in items + [current] if item.strip()]


def _expand(item: str) -> list[str]:
    if "://" in item or item.startswith("pipe:"):
        return list(braceexpand(item))  # remote: cannot check existence here
    if Path(item).is_dir():
        return sorted(str(p) for p in Path(item).glob("*.tar"))
    found = []
    for name in braceexpand(item):
        found += sorted(glob.glob(name)) if any(c in name for c in "*?[") else [name]
    missing = [name for name in found if not Path(name).is_file()]
    if missing and len(missing) < len(found):
        raise FileNotFoundError(f"{len(missing)} shard(s) of '{item}' do not exist, e.g. {missing[0]}")
    return [] if missing else found


def resolve_shards(spec: str) -> list[str]:
    """Shard paths from a folder (its `*.tar`, sorted), a brace pattern, a glob, or a comma list of those."""
    urls = [url for item in _split_top_level(str(spec)) for url in _expand(item)]
    if not urls:
        raise FileNotFoundError(
            f"no shards match '{spec}' — run scripts/make_shards.py --source fashion-mnist|folder:PATH|csv:FILE "
            "--out DIR, or fix data.train_shards / data.eval_shards")
    return urls


def _shard_dirs(spec: str) -> list[Path]:
    first = Path(resolve_shards(spec)[0]).parent
    return [first, first.parent]


def read_classnames(shard_spec: str) -> list[str]:
    """Class names from `classnames.txt` in the shards' folder or its parent; [] when there is none."""
    for folder in _shard_dirs(shard_spec):
        path = folder / "classnames.txt"
        if path.is_file():
            return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return []


def shard_sizes(urls: list[str]) -> Optional[list[int]]:
    """Samples per shard from each folder's `sizes.json`; None if any shard is not listed."""
    cache: dict[Path, dict[str, int]] = {}
    sizes = []
    for url in urls:
        folder = Path(url).parent
        if folder not in cache:
            try:
                cache[folder] = json.loads((folder / "sizes.json").read_text())
            except (OSError, ValueError):
                cache[folder] = {}
        if Path(url).name not in cache[folder]:
            return None
        sizes.append(int(cache[folder][Path(url).name]))
    return sizes


def require_one_global_batch(spec: str, batch_size: int, world_size: int) -> None:
    """`ConfigError` when `sizes.json` shows the shards of `spec` hold fewer samples than one global batch
    (no check when sizes.json does not list every shard)."""
    urls = resolve_shards(spec)
    sizes = shard_sizes(urls)
    need = batch_size * world_size
    if sizes is not None and sum(sizes) < need:
        raise ConfigError(f"'{spec}' holds {sum(sizes)} samples, fewer than one global batch "
                          f"({batch_size} per process × {world_size} processes = {need}) — lower "
                          "train.batch_size or write more data with scripts/make_shards.py")
