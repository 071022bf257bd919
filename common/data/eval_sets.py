"""The data of a run's evaluations beyond training: the zero-shot sets of `eval.zeroshot` resolved to shards,
class names and templates, and the checks that a set really is one (labelled, names for every label).

A set's class names: its `classnames` file, else `classnames.txt` beside its shards; its templates: its
`templates` (a set name or a file), else `zeroshot_classification_templates.txt` beside its shards (the
clip_benchmark layout scripts/make_shards.py writes), else `data.templates`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from webdataset.tariterators import tarfile_samples

from common.config.sections import ZeroShotSetConfig
from common.data.shard_list import beside_shards, read_classname_file, resolve_shards
from common.data.templates import Template, load_templates
from common.errors import ConfigError

TEMPLATES_FILE = "zeroshot_classification_templates.txt"  # clip_benchmark's name
CLASSNAMES_FILE = "classnames.txt"
LABEL_CHECK_SAMPLES = 256  # samples of a set's first shard read at start-up to check its labels


@dataclass(frozen=True)
class ZeroShotSet:
    """A resolved `eval.zeroshot` item."""
    name: str
    urls: tuple[str, ...]
    classnames: tuple[str, ...]
    templates: Sequence[Template]


def _templates(spec: str, key: str) -> Sequence[Template]:
    try:
        return load_templates(spec)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{key}={spec!r}: {err} — give a template set name or a readable template file") \
            from None


def resolve_zeroshot_set(item: ZeroShotSetConfig, index: int, default_templates: str) -> ZeroShotSet:
    """Shards, class names and templates of `eval.zeroshot[index]`; ConfigError naming the key otherwise."""
    key = f"eval.zeroshot[{index}]"
    try:
        urls = resolve_shards(item.shards)
    except FileNotFoundError:
        raise ConfigError(f"{key}.shards={item.shards!r} matches no shard — point it at the set's .tar shards "
                          "(a folder, brace pattern or glob)") from None
    names_file = Path(item.classnames) if item.classnames else beside_shards(item.shards, CLASSNAMES_FILE)
    if names_file is None or not names_file.is_file():
        where = f"{key}.classnames={item.classnames!r} does not exist" if item.classnames else \
            f"{key} ('{item.name}') has no {CLASSNAMES_FILE} beside its shards"
        raise ConfigError(f"{where} — set {key}.classnames to a text file with one class name a line")
    classnames = read_classname_file(names_file)
    if not classnames:
        raise ConfigError(f"{key}.classnames: {names_file} holds no class name — write one name a line")
    if item.templates:
        templates = _templates(item.templates, f"{key}.templates")
    else:
        beside = beside_shards(item.shards, TEMPLATES_FILE)
        templates = _templates(str(beside), f"{key}.templates") if beside else _templates(
            default_templates, "data.templates")
    return ZeroShotSet(item.name, tuple(urls), tuple(classnames), templates)


def first_labels(urls: Sequence[str], limit: int = LABEL_CHECK_SAMPLES) -> tuple[int, list[int]]:
    """(samples read, their `cls` labels) of the first `limit` samples of the first shard."""
    read, labels = 0, []
    for sample in tarfile_samples([{"url": urls[0]}]):
        read += 1
        if "cls" in sample:
            labels.append(int(sample["cls"]))
        if read >= limit:
            break
    return read, labels


def check_zeroshot_set(item: ZeroShotSetConfig, index: int, zs: ZeroShotSet) -> None:
    """ConfigError when the set is not a labelled set its class names fit: no `cls` in its first shard
    (caption-only shards), a label ≥ the number of class names, or a `classnames` file whose length differs
    from the set's own classnames.txt."""
    key = f"eval.zeroshot[{index}]"
    read, labels = first_labels(zs.urls)
    if not labels:
        raise ConfigError(f"{key} ('{item.name}'): the first {read} samples of {zs.urls[0]} carry no class label "
                          "(cls) — a zero-shot set needs labelled shards (scripts/make_shards.py --source "
                          "imagefolder-val:PATH --classnames FILE writes one); caption-only shards belong in "
                          "data.eval_shards (retrieval)")
    if max(labels) >= len(zs.classnames):
        raise ConfigError(f"{key}.classnames names {len(zs.classnames)} classes but {zs.urls[0]} holds label "
                          f"{max(labels)} — use the class-name file written with the set (one name per label)")
    own = beside_shards(item.shards, CLASSNAMES_FILE)
    if item.classnames and own is not None and len(read_classname_file(own)) != len(zs.classnames):
        raise ConfigError(f"{key}.classnames={item.classnames!r} names {len(zs.classnames)} classes, the set's "
                          f"own {own} {len(read_classname_file(own))} — give a file with one name per class "
                          "of the set, in label order")


def check_label(meta: dict[str, Any], num_classes: int) -> int:
    """A zero-shot sample's label; ValueError (the sample is skipped and counted) when it has none or one
    outside the class names."""
    label = meta.get("cls")
    if label is None or not 0 <= label < num_classes:
        raise ValueError(f"zero-shot sample {meta.get('key')} has label {label}, outside the {num_classes} "
                         "class names")
    return label
