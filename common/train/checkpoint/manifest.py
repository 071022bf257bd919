"""A checkpoint's manifest: the size and sha256 of every file, recorded in its completion marker
(`engine_state.json`) when the checkpoint is sealed, and checked before it is resumed from."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from common.artifacts import ENGINE_STATE_FILE, EngineState


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def hash_all(paths: Iterable[Path]) -> list[str]:
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        return list(pool.map(sha256, paths))


def file_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Size (bytes) and sha256 of every file under `folder` but the completion marker, by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ENGINE_STATE_FILE)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": digest}
            for p, digest in zip(files, hash_all(files))}


def seal(checkpoint: Path, state: EngineState) -> None:
    """Write the completion marker: `state` with the manifest of everything already in `checkpoint`."""
    state.files = file_manifest(checkpoint)
    state.write(checkpoint)


def damaged_files(checkpoint: str | Path) -> list[str]:
    """What no longer matches the manifest of a complete checkpoint, one phrase per file ([] when intact):
    a missing file, another size (truncated), another sha256 (bit flips). A checkpoint without a manifest,
    or whose marker does not parse, counts as damaged (it cannot be verified)."""
    checkpoint = Path(checkpoint)
    try:
        manifest = EngineState.read(checkpoint).files
    except (OSError, ValueError, TypeError) as err:
        return [f"{ENGINE_STATE_FILE} unreadable ({type(err).__name__})"]
    if not manifest:
        return [f"{ENGINE_STATE_FILE} lists no files (written before checkpoints carried a manifest)"]
    problems, present = [], []
    for name, expected in manifest.items():
        path = checkpoint / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != expected["bytes"]:
            problems.append(f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}")
        else:
            present.append((name, path))
    for (name, _), digest in zip(present, hash_all(p for _, p in present)):
        if digest != manifest[name]["sha256"]:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems
