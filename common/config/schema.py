"""Typed configs: YAML files in `configs/` loaded into dataclasses, plus dotted `key=value` overrides.

One loader serves both stages. A schema is a (nested) dataclass; a YAML file may name a `base:` file
(relative to itself) whose values it overrides. A field may also hold a LIST of sections
(`list[SomeSection]`, e.g. `eval.zeroshot`): each item is a mapping checked like a section and named
`key[i]` in errors; a list replaces the inherited or default list as a whole. Every key and value is
checked against the schema before anything is built: an unknown key, a wrong type or a value outside
`choices`/`min`/`max` (declared in a field's `metadata`) is a one-line `ConfigError` that names the key,
where it came from, and the closest valid key or the allowed values.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from common.errors import ConfigError

T = TypeVar("T")


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" — did you mean '{match[0]}'?" if match else f" — valid keys: {', '.join(valid)}"


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key of a dataclass schema, leaves and sections."""
    keys = []
    for name, hint in get_type_hints(schema).items():
        if name.startswith("_"):
            continue
        keys.append(prefix + name)
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{name}.")
    return keys


def _section_list_item(hint: Any) -> type | None:
    """The section type of a `list[Section]` hint (also inside Optional/Union); None for anything else."""
    for arg in (get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)):
        if get_origin(arg) is list and get_args(arg) and dataclasses.is_dataclass(get_args(arg)[0]):
            return get_args(arg)[0]
    return None


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check `value` against the type `hint`; convert only where lossless (int→float, list→tuple)."""
    origin, args = get_origin(hint), get_args(hint)
    bad = ConfigError(f"bad value {value!r} for '{key}' in {where}: expected {_type_name(hint)}")
    if hint is Any:
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"bad value {value!r} for '{key}' in {where} — use one of: "
                              + ", ".join(repr(a) for a in args))
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                if _section_list_item(arg) is not None and isinstance(value, list):
                    raise  # the value is a list of sections: its own error names the item and key
        raise bad
    if dataclasses.is_dataclass(hint):  # one item of a list of sections
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for '{key}' in {where}: expected a mapping of "
                              f"{', '.join(f.name for f in dataclasses.fields(hint))}")
        return build(hint, value, where, key + ".")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise bad
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"bad value {value!r} for '{key}' in {where}: expected {len(args)} items")
            return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
        item = args[0] if args else Any
        if dataclasses.is_dataclass(item):
            return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return origin(_coerce(v, item, key, where) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise bad
    if hint in (bool, str) and not isinstance(value, hint):
        raise bad
    return value


def _type_name(hint: Any) -> str:
    if get_origin(hint) in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(hint))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_range(value: Any, meta: typing.Mapping, key: str, where: str) -> None:
    if value is None:
        return
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: must be ≥ {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"bad value {value!r} for '{key}' in {where}: must be ≤ {meta['max']}")


def build(schema: type[T], values: dict[str, Any], where: str, prefix: str = "",
          root: type | None = None, root_prefix: str | None = None) -> T:
    """Construct `schema` from a nested dict, validating every key and value. Unknown keys are matched
    against the keys of `root` (default: `schema`), whose own keys start with `root_prefix`."""
    if root is None:
        root, root_prefix = schema, prefix
    hints = get_type_hints(schema, include_extras=False)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        if name not in fields:
            valid = _all_keys(root, root_prefix or "")
            raise ConfigError(f"unknown key '{key}' in {where}{_closest(key, valid)}")
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise ConfigError(f"bad value {value!r} for '{key}' in {where}: expected a section")
            kwargs[name] = build(hint, _deep_merge(_section_defaults(fields[name]), value), where,
                                 key + ".", root, root_prefix)
        else:
            kwargs[name] = _coerce(value, hint, key, where)
            _check_range(kwargs[name], fields[name].metadata, key, where)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing key '{prefix + missing[0]}' in {where}: it has no default, set it")
    return schema(**kwargs)


def _section_defaults(field: dataclasses.Field) -> dict[str, Any]:
    """The values of a section field's own default (a parent may set non-class defaults)."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return {}
    return dataclasses.asdict(default)  # nested sections as dicts too, so overrides merge into them


def _deep_merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a config YAML, following `base:` (relative to the file) recursively."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found — pass an existing YAML with --config")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        data = _deep_merge(read_yaml(path.parent / base), data)
    return data


def parse_override(item: str) -> dict[str, Any]:
    """`a.b.c=value` → {'a': {'b': {'c': value}}}; the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"bad override '{item}': write it as dotted.key=value, e.g. train.steps=100")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and value in ("None", "null"):
        value = None
    nested: dict[str, Any] = value
    for part in reversed(key.strip().split(".")):
        nested = {part: nested}
    return nested


def load_config(schema: type[T], path: str | Path | None, overrides: typing.Sequence[str] = ()) -> T:
    """Load `path` (optional) into `schema`, then apply `key=value` overrides; validated as one."""
    values = read_yaml(path) if path else {}
    where = str(path) if path else "defaults"
    build(schema, values, where)  # errors in the file are reported against the file
    for item in overrides:
        update = parse_override(item)
        build(schema, _deep_merge(values, update), f"command-line override '{item}'")
        values = _deep_merge(values, update)
    cfg = build(schema, values, where)
    _validate_tree(cfg)
    return cfg


def _call_tree(cfg: Any, method: str, *args: Any) -> None:
    """Call `method(*args)` on every section that has one (list items included), innermost first, then on
    `cfg` itself."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        for section in (value if isinstance(value, list) else [value]):
            if dataclasses.is_dataclass(section):
                _call_tree(section, method, *args)
    bound = getattr(cfg, method, None)
    if callable(bound):
        bound(*args)


def _validate_tree(cfg: Any) -> None:
    """`validate()` of every section: the values alone (a config stays loadable after its files moved)."""
    _call_tree(cfg, "validate")


def validate_run(cfg: Any, run: Any) -> None:
    """`validate_run(run)` of every section: the checks that read the disk, the model registries or the
    machine, or need the run's facts (world size, batch figures) — before any model is built."""
    _call_tree(cfg, "validate_run", run)


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) of a config dataclass, for YAML/JSON."""
    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(dataclasses.asdict(cfg))
