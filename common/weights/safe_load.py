"""Loading weights files from elsewhere without running them: safetensors, or torch files under
`weights_only=True`. A pickle that would import anything beyond tensors and plain data is refused with one
line naming what it would import (read from its opcodes, nothing in it is run)."""
from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Iterable

import torch
from safetensors.torch import load_file

from common.errors import BadInputError, UnreadableFileError, UnsafeFileError

STATE_DICT_KEYS = ("state_dict", "model", "module")  # where training scripts nest a state dict


def unsafe_globals(path: Path) -> list[str]:
    """The globals (module.name) a torch file would import beyond weights_only's, read without running it:
    torch's own scan for its zip format, the pickle opcodes (`pickletools`) for a bare pickle."""
    if zipfile.is_zipfile(path):
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    found, strings = [], []
    try:
        for opcode, arg, _ in pickletools.genops(path.read_bytes()):
            if opcode.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # noqa: BLE001 - a damaged pickle: report what was found before the damage
        pass
    return found


def refused(path: Path, err: Exception) -> BadInputError:
    """The one-line error for a torch file that did not load under `weights_only=True`."""
    if isinstance(err, pickle.UnpicklingError):
        imports = unsafe_globals(path)
        what = f"would import {', '.join(imports)}" if imports else "is not a tensors-only pickle"
        return UnsafeFileError(f"'{path}' {what} — refused, nothing in it was run: only safetensors or plain "
                               "tensor state dicts load here (re-save it with safetensors)")
    text = " ".join(str(err).split())
    return UnreadableFileError(f"cannot read weights file '{path}' ({type(err).__name__}: {text[:200]}) — is "
                               "it a complete safetensors/PyTorch state dict?")


def torch_load_tensors_only(path: Path, allowed: Iterable[Any] = ()) -> Any:
    """`torch.load` with `weights_only=True` (plus the `allowed` globals), on the CPU."""
    mmap = zipfile.is_zipfile(path)  # the zip format maps tensor data instead of reading it
    with torch.serialization.safe_globals(list(allowed)):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def require_tensors_only(path: str | Path, allowed: Iterable[Any] = ()) -> None:
    """`UnsafeFileError` unless the torch file `path` loads with `weights_only=True` (tensors, plain
    containers and numbers, plus the `allowed` globals); nothing in it is run. safetensors pass as they are."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return
    try:
        torch_load_tensors_only(path, allowed)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot be trusted as tensors
        raise refused(path, err) from err


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file this process did not write: safetensors, or torch with `weights_only=True`
    (a pickle that would run code: `UnsafeFileError`; a damaged file: `UnreadableFileError`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' not found")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch_load_tensors_only(path)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt, foreign or unsafe file
        raise refused(path, err) from err
    for key in STATE_DICT_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
