"""Shard lists: a folder, brace pattern, glob or comma list → shard paths; per-shard sample counts from
`sizes.json` (the layout scripts/make_shards.py writes) or img2dataset's `NNNNN_stats.json`; class names
from `classnames.txt`."""
from __future__ import annotations

import glob
import json
import re
from pathlib import Path
from typing import Optional

from braceexpand import braceexpand

from common.errors import ConfigError


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


def _natural_key(path: str) -> list:
    """Sort key that orders numbered names by number (`2.tar` before `10.tar`, as clip_benchmark numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def _expand(item: str) -> list[str]:
    if "://" in item or item.startswith("pipe:"):
        return list(braceexpand(item))  # remote: cannot check existence here
    if Path(item).is_dir():
        return sorted((str(p) for p in Path(item).glob("*.tar")), key=_natural_key)
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


def read_classname_file(path: str | Path) -> list[str]:
    """Class names of a text file, one a line (blank lines ignored): line i names label i."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def beside_shards(shard_spec: str, name: str) -> Optional[Path]:
    """The file `name` in the folder of the first shard of `shard_spec` or in its parent; None if absent."""
    return next((folder / name for folder in _shard_dirs(shard_spec) if (folder / name).is_file()), None)


def read_classnames(shard_spec: str) -> list[str]:
    """Class names from `classnames.txt` in the shards' folder or its parent; [] when there is none."""
    path = beside_shards(shard_spec, "classnames.txt")
    return read_classname_file(path) if path is not None else []


def _img2dataset_size(url: str) -> Optional[int]:
    """The `successes` count of img2dataset's `NNNNN_stats.json` beside shard `NNNNN.tar`, if any."""
    try:
        return int(json.loads(Path(url).with_name(Path(url).stem + "_stats.json").read_text())["successes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def shard_sizes(urls: list[str]) -> Optional[list[int]]:
    """Samples per shard from each folder's `sizes.json`, else img2dataset's per-shard stats file; None if
    any shard is not listed."""
    cache: dict[Path, dict[str, int]] = {}
    sizes = []
    for url in urls:
        folder = Path(url).parent
        if folder not in cache:
            try:
                cache[folder] = json.loads((folder / "sizes.json").read_text())
            except (OSError, ValueError):
                cache[folder] = {}
        size = cache[folder].get(Path(url).name)
        size = int(size) if size is not None else _img2dataset_size(url)
        if size is None:
            return None
        sizes.append(size)
    return sizes


def require_one_contrastive_batch(spec: str, contrastive_batch: int, figures: str) -> None:
    """`ConfigError` when `sizes.json` shows the shards of `spec` hold fewer samples than one contrastive
    batch (`figures` says how it is made up); no check when sizes.json does not list every shard."""
    urls = resolve_shards(spec)
    sizes = shard_sizes(urls)
    if sizes is not None and sum(sizes) < contrastive_batch:
        raise ConfigError(f"'{spec}' holds {sum(sizes)} samples, fewer than one contrastive batch ({figures} = "
                          f"{contrastive_batch}) — lower train.batch_size or write more data with "
                          "scripts/make_shards.py")
