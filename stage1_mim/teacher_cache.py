"""A reference teacher made once and reused, as a downloaded CLIP would be: a cache of open_clip export
folders, each found by the key of what made it (the teacher's training config and its training data).

    CACHE/teacher-<digest>/           one entry; <digest> = sha256 of its key (16 hex digits)
        export/                       the open_clip folder stage 1 loads (`teacher.model=local-dir:…/export`)
        run/                          the training run's config.yaml and metrics.jsonl (provenance)
        teacher_key.json              written LAST: {"key", "files" (size + sha256 of every other file),
                                      "made": what the maker reported (wall and CPU seconds, …)}

An entry is made in `teacher-<digest>.tmp-<pid>/` and renamed into place; `finish` (the export's
`relocate`, which names the towers by their final path) runs after the rename and the key file after it,
so a folder without `teacher_key.json` is half-written: it is never reused, it is removed and remade.
A complete entry is reused only when its stored key equals the key asked for and its files match
their sizes and hashes; otherwise `CacheKeyError`, one line naming the entry and the fix.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from common.artifacts import CLIP_CONFIG_FILE, OPEN_CLIP_WEIGHTS_FILE
from common.data.shard_list import beside_shards, resolve_shards
from common.errors import BadInputError, ConfigError
from common.train.checkpoint.manifest import file_manifest

KEY_FILE = "teacher_key.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")  # what open_clip's local-dir: loader looks for
DEFAULT_CACHE = Path.home() / ".cache" / "evaclip" / "teachers"
# config keys that do not change the teacher's weights (where it writes, how often it logs or evaluates,
# which paths hold its data: the data enter the key by content)
IGNORED_KEYS = ("train.output_dir", "train.eval_every", "train.save_every", "train.log_every", "train.keep_last",
                "train.progress", "train.tensorboard", "train.remote_dir", "train.checkpoint_errors",
                "train.dist_timeout_s", "data.train_shards", "data.eval_shards", "data.eval_batch_size",
                "data.eval_max_samples", "data.final_eval_max_samples", "eval",
                # what only watches a run (a version that adds such a field must not orphan cached teachers)
                "train.wandb", "train.telemetry", "train.data_wait_warn", "train.peak_tflops")


class CacheKeyError(BadInputError):
    """A cache entry that cannot be reused: made for another key, or its files changed."""


class NotAnExportError(ConfigError):
    """A teacher folder that is not an open_clip export."""


@dataclass(frozen=True)
class TeacherKey:
    """What a cached teacher is a function of: `config` (its resolved training config, less IGNORED_KEYS)
    and `data` (`data_fingerprint` of its training shards)."""
    config: dict[str, Any]
    data: str

    def as_dict(self) -> dict[str, Any]:
        return {"config": self.config, "data": self.data}

    def digest(self) -> str:
        """16 hex digits of the sha256 of the key's canonical JSON."""
        return hashlib.sha256(json.dumps(self.as_dict(), sort_keys=True).encode()).hexdigest()[:16]


def weight_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a resolved config as a nested dict) without IGNORED_KEYS."""
    out = json.loads(json.dumps(config))
    for dotted in IGNORED_KEYS:
        *parents, leaf = dotted.split(".")
        section = out
        for name in parents:
            section = section.get(name, {})
        section.pop(leaf, None)
    return out


def data_fingerprint(shards: str) -> str:
    """sha256 over every shard of `shards` (name and content, in order) and the class names and templates
    beside them: the training data as a teacher saw it."""
    digest = hashlib.sha256()
    files = [Path(url) for url in resolve_shards(shards)]
    files += [f for f in (beside_shards(shards, "classnames.txt"),
                          beside_shards(shards, "zeroshot_classification_templates.txt")) if f is not None]
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def entry_dir(cache: Path, key: TeacherKey) -> Path:
    return Path(cache) / f"teacher-{key.digest()}"


def require_open_clip_export(folder: str | Path, flag: str = "--teacher local-dir:") -> Path:
    """`folder` if open_clip's `local-dir:` loader can read it (`open_clip_config.json` and a weights file:
    `*.safetensors`, `*.bin` or `*.pth`); else `NotAnExportError`, one line naming the fix."""
    folder = Path(folder)
    missing = [] if (folder / CLIP_CONFIG_FILE).is_file() else [CLIP_CONFIG_FILE]
    if not any(p.suffix in WEIGHT_SUFFIXES for p in folder.glob("*") if p.is_file()):
        missing.append(f"weights file ({OPEN_CLIP_WEIGHTS_FILE} or another {'/'.join(WEIGHT_SUFFIXES)})")
    if not folder.is_dir() or missing:
        what = "does not exist" if not folder.is_dir() else f"has no {' and no '.join(missing)}"
        raise NotAnExportError(f"{flag}{folder} is not an open_clip export ({what}) — export a stage-2 run with "
                               f"`python scripts/export_open_clip.py RUN {folder}` and pass that folder")
    return folder


def read_entry(entry: Path) -> dict[str, Any]:
    return json.loads((entry / KEY_FILE).read_text())


def check_entry(entry: Path, key: TeacherKey) -> dict[str, Any]:
    """The key record of a complete `entry`, after checking that it was made for `key` and that its files
    are intact; `CacheKeyError` (one line) otherwise."""
    stored = read_entry(entry)
    if stored.get("key") != key.as_dict():
        old = stored.get("key", {})
        differs = [part for part in ("config", "data") if old.get(part) != key.as_dict()[part]]
        raise CacheKeyError(f"cached teacher {entry} was made for another {' and '.join(differs) or 'key'} than "
                            f"this run's — delete {entry} (the next run remakes it) or pass another --teacher-cache")
    now, files = file_manifest(entry), stored.get("files", {})
    now.pop(KEY_FILE, None)
    changed = sorted(name for name in {*now, *files} if now.get(name) != files.get(name))
    if changed:
        raise CacheKeyError(f"cached teacher {entry} is damaged ({changed[0]} changed) — delete {entry}; "
                            "the next run remakes it")
    return stored


def lookup(cache: Path, key: TeacherKey) -> Optional[dict[str, Any]]:
    """The key record of the entry made for `key`, or None when there is none (a half-written one is
    removed). `CacheKeyError` for an entry that exists but cannot be reused."""
    entry = entry_dir(cache, key)
    if not entry.is_dir():
        return None
    if not (entry / KEY_FILE).is_file():
        shutil.rmtree(entry)  # half-written (stopped between the rename and the key file): never reused
        return None
    return check_entry(entry, key)


def get_or_make(cache: Path, key: TeacherKey, make: Callable[[Path], dict[str, Any]],
                finish: Callable[[Path], None] = lambda entry: None) -> tuple[Path, dict[str, Any], bool]:
    """(entry, its key record, made now?). Reuses the entry made for `key`; otherwise `make(tmp)` fills a
    temporary folder (returning what to record under "made"), which is renamed into place, `finish(entry)`
    runs, and the key file is written last."""
    entry = entry_dir(cache, key)
    stored = lookup(cache, key)
    if stored is not None:
        return entry, stored, False
    entry.parent.mkdir(parents=True, exist_ok=True)
    for stale in entry.parent.glob(f"{entry.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
    try:
        made = make(tmp)
        os.rename(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    finish(entry)
    record = {"key": key.as_dict(), "files": file_manifest(entry), "made": made}
    part = entry / f"{KEY_FILE}.part"
    part.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    os.replace(part, entry / KEY_FILE)
    return entry, record, True
