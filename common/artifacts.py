"""The run folder: every file a run writes, declared once, each with a typed writer and reader.

    RUN/config.yaml                   the resolved config                     write_config / read_config
    RUN/metrics.jsonl                 one JSON record per line                MetricsFile
    RUN/tensorboard/                  TensorBoard scalars (common.train.metrics)
    RUN/checkpoints/step_XXXXXXXX/    accelerate's state + the weights below + engine_state.json, written
                                      last: a folder without it is never resumed from     EngineState;
                                      it lists every other file's size and sha256: damaged_files
    RUN/student_trunk.safetensors     stage 1: the timm trunk, metadata `TrunkInfo`  write_trunk / read_trunk_info
    RUN/model.safetensors             stage 2: the CLIP in open_clip's key layout  write_clip / load_weights
    RUN/open_clip_config.json         stage 2: open_clip's model_cfg, preprocess_cfg + `ClipInfo`  ClipConfig
    RUN/hf_text/                      stage 2 with a Hugging Face text tower: its config + tokenizer files

The weights files sit at the run's top level (newest) and inside every checkpoint; `run_folder_of` finds
the run a weights file belongs to and `RunSummary` reads what the run says about itself (config, evals).
An export folder (`common.export`) holds `open_clip_config.json` + `open_clip_model.safetensors` in
open_clip's own layout.
Files from elsewhere load through `load_weights` (safetensors, or torch with `weights_only=True`);
`require_tensors_only` refuses a pickle that would import anything but tensors and plain data.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import pickletools
import re
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from common.config.schema import ConfigError, build, load_config, read_yaml, to_dict
from common.config.sections import DataConfig, TrainConfig

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
ENGINE_STATE_FILE = "engine_state.json"  # written last into a checkpoint: its completion marker
TRUNK_FILE = "student_trunk.safetensors"
CLIP_WEIGHTS_FILE = "model.safetensors"
CLIP_CONFIG_FILE = "open_clip_config.json"
HF_TEXT_DIR = "hf_text"
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # an export folder's weights: what open_clip's loaders read
_STEP_DIR = re.compile(r"^step_(\d+)$")


class NotARunError(ValueError):
    """The given folder is not a run (or checkpoint) of the expected stage."""


# ---- config.yaml ---------------------------------------------------------------------------------
def write_config(run_dir: str | Path, cfg: Any) -> None:
    """The resolved config as YAML, so the run can be read back with `read_config`."""
    import yaml
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def read_config(run_dir: str | Path, schema: type) -> Any:
    """A run's config.yaml loaded into `schema` (validated like any config)."""
    return load_config(schema, Path(run_dir) / CONFIG_FILE)


def read_resolved_config(run_dir: str | Path) -> Optional[dict[str, Any]]:
    """A run's config.yaml as the plain dict it was written from (any stage); None when there is none."""
    path = Path(run_dir) / CONFIG_FILE
    return read_yaml(path) if path.is_file() else None


# ---- metrics.jsonl -------------------------------------------------------------------------------
class MetricsFile:
    """`RUN/metrics.jsonl`: records appended one per line; `step` orders them."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / METRICS_FILE

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        """All records (empty when the file does not exist)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def evals(self) -> list["EvalRecord"]:
        """The evaluation records, in file order."""
        return [EvalRecord(r["step"], r["eval"]) for r in self.read() if "eval" in r]

    def starts(self) -> list[dict[str, Any]]:
        """The record each training process logged when it began (step, resumed_from, world_size, …)."""
        return [r for r in self.read() if r.get("event") == "start"]

    def truncate_after(self, step: int) -> None:
        """Drop records after `step` (what a crashed run logged past the checkpoint a resume starts from)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return MetricsFile(run_dir).read()


@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of a run: the step it ran after and its metrics (zero-shot top-k and retrieval
    recall as fractions in [0, 1] for stage 2; the probe for stage 1)."""
    step: int
    metrics: dict[str, float]


# ---- checkpoints/ --------------------------------------------------------------------------------
def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temp or unmarked folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / ENGINE_STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ENGINE_STATE_FILE).is_file()


def weights_step(weights_file: str | Path) -> Optional[int]:
    """The step a weights file was saved at: its checkpoint's, or for the run's top-level (newest) weights
    the newest complete checkpoint's; None when the run has no checkpoint."""
    folder = Path(weights_file).parent
    if is_checkpoint(folder):
        return EngineState.read(folder).step
    newest = complete_checkpoints(folder)
    return EngineState.read(newest[-1]).step if newest else None


def run_folder_of(weights_file: str | Path) -> Path:
    """The run folder a weights file belongs to: its own folder, or the run above `checkpoints/step_X/`."""
    folder = Path(weights_file).parent
    if _STEP_DIR.match(folder.name) and folder.parent.name == CHECKPOINTS_DIR:
        return folder.parent.parent
    return folder


@dataclass
class EngineState:
    """What the engine keeps beside accelerate's state; its file, written last, marks a checkpoint complete
    and lists every other file of the checkpoint (`files`: relative path → {"bytes", "sha256"})."""
    step: int
    bad_steps: int = 0
    skipped_samples: int = 0
    schedule: dict[str, int] = field(default_factory=dict)  # {"steps", "global_batch"} it was trained with
    source_draws: dict[str, int] = field(default_factory=dict)  # samples drawn per training source, all ranks
    scheduler: dict[str, Any] = field(default_factory=dict)  # the LR scheduler's state_dict (plain JSON)
    data_start: Optional[int] = None  # step whose seed started the data stream (None: `step`)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # the manifest (`file_manifest`)

    def write(self, checkpoint: Path) -> None:
        """Write the marker; `files` is filled with the manifest of everything already in `checkpoint`."""
        self.files = file_manifest(checkpoint)
        (Path(checkpoint) / ENGINE_STATE_FILE).write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, checkpoint: Path) -> "EngineState":
        values = json.loads((Path(checkpoint) / ENGINE_STATE_FILE).read_text())
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)  # releases the GIL: files hash in parallel threads
    return digest.hexdigest()


def _hash_all(paths: Iterable[Path]) -> list[str]:
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        return list(pool.map(_sha256, paths))


def file_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Size (bytes) and sha256 of every file under `folder` but the completion marker, by relative path."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != ENGINE_STATE_FILE)
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": digest}
            for p, digest in zip(files, _hash_all(files))}


def damaged_files(checkpoint: str | Path) -> list[str]:
    """What no longer matches the manifest of a complete checkpoint, one phrase per file ([] when intact):
    a missing file, another size (truncated), another sha256 (bit flips). A checkpoint written before
    manifests existed, or whose marker does not parse, counts as damaged (it cannot be verified)."""
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
    for (name, _), digest in zip(present, _hash_all(p for _, p in present)):
        if digest != manifest[name]["sha256"]:
            problems.append(f"{name} does not match its sha256 in the manifest")
    return problems


# ---- weights -------------------------------------------------------------------------------------
def _fp32_cpu(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().float().contiguous().cpu() for k, v in state_dict.items()}


class UnsafeFileError(ConfigError):
    """A weights or checkpoint file that is not tensors-only: unpickling it would import (and could run)
    other code. One line, naming the file and what it would import."""


def _unsafe_globals(path: Path) -> list[str]:
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


def _refused(path: Path, err: Exception) -> ConfigError:
    """The one-line error for a torch file that did not load under `weights_only=True`."""
    if isinstance(err, pickle.UnpicklingError):
        imports = _unsafe_globals(path)
        what = f"would import {', '.join(imports)}" if imports else "is not a tensors-only pickle"
        return UnsafeFileError(f"'{path}' {what} — refused, nothing in it was run: only safetensors or plain "
                               "tensor state dicts load here (re-save it with safetensors)")
    text = " ".join(str(err).split())
    return ConfigError(f"cannot read weights file '{path}' ({type(err).__name__}: {text[:200]}) — is it a "
                       "complete safetensors/PyTorch state dict?")


def _torch_load_tensors_only(path: Path, allowed: Iterable[Any] = ()) -> Any:
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
        _torch_load_tensors_only(path, allowed)
    except Exception as err:  # noqa: BLE001 - any failure means it cannot be trusted as tensors
        raise _refused(path, err) from err


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file we did not write in this process: safetensors, or torch with
    `weights_only=True` (a pickle that would run code: `UnsafeFileError`). Errors are one `ConfigError` line
    naming the file and what was wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file '{path}' not found")
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else _torch_load_tensors_only(path)
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt, foreign or unsafe file
        raise _refused(path, err) from err
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def find_weights(run_dir: str | Path, filename: str, what: str) -> Path:
    """`filename` in a run folder (top level), one of its checkpoints (newest first), or the file itself."""
    path = Path(run_dir)
    if path.is_file():
        return path
    for candidate in [path] + complete_checkpoints(path)[::-1]:
        if (candidate / filename).is_file():
            return candidate / filename
    raise NotARunError(f"'{path}' is not a {what} run folder or checkpoint (no {filename} in it or under "
                       f"{CHECKPOINTS_DIR}/) — pass the train.output_dir of a finished run")


@dataclass(frozen=True)
class TrunkInfo:
    """The metadata of `student_trunk.safetensors`: what a trunk must be built as to load it."""
    vision_model: str  # timm registered name
    image_size: int


def save_trunk(path: str | Path, state: dict[str, torch.Tensor], info: TrunkInfo) -> Path:
    """A timm trunk's weights (timm key names) as safetensors with `info` in its metadata."""
    save_file(_fp32_cpu(state), str(path), metadata={"format": "pt", "vision_model": info.vision_model,
                                                     "image_size": str(info.image_size)})
    return Path(path)


def write_trunk(out_dir: str | Path, state: dict[str, torch.Tensor], info: TrunkInfo) -> Path:
    """Stage 1's `student_trunk.safetensors` in `out_dir` (a run folder or a checkpoint)."""
    return save_trunk(Path(out_dir) / TRUNK_FILE, state, info)


def read_trunk_info(path: str | Path) -> Optional[TrunkInfo]:
    """The `TrunkInfo` of a trunk file; None for a safetensors file without it (e.g. a plain timm export)."""
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if "vision_model" not in meta or "image_size" not in meta:
        return None
    return TrunkInfo(meta["vision_model"], int(meta["image_size"]))


@dataclass(frozen=True)
class ClipInfo:
    """evaclip's own block of `open_clip_config.json` (open_clip ignores it)."""
    stage: int
    loss: str
    vision_model: str  # the timm registered name the trunk was trained as
    image_size: int
    init_from: Optional[str] = None  # the stage-1 trunk file `--init` loaded (absolute); None: from scratch


@dataclass
class ClipConfig:
    """`open_clip_config.json`: open_clip's `model_cfg` and `preprocess_cfg`, plus `ClipInfo`."""
    model_cfg: dict[str, Any]
    preprocess_cfg: dict[str, Any]
    info: ClipInfo

    def write(self, folder: str | Path) -> None:
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg,
                  "evaclip": dataclasses.asdict(self.info)}
        (Path(folder) / CLIP_CONFIG_FILE).write_text(json.dumps(config, indent=2))

    @classmethod
    def read(cls, folder: str | Path) -> "ClipConfig":
        file = Path(folder) / CLIP_CONFIG_FILE
        if not file.is_file():
            raise NotARunError(f"'{folder}' has no {CLIP_CONFIG_FILE} — not a stage-2 run or export")
        config = json.loads(file.read_text())
        info = config.get("evaclip", {})
        fields = dataclasses.fields(ClipInfo)
        missing = [f.name for f in fields if f.name not in info and f.default is dataclasses.MISSING]
        if missing or "model_cfg" not in config:
            raise NotARunError(f"'{file}' was not written by an evaclip stage-2 run (no evaclip.{missing[0] if missing else 'model_cfg'})")
        return cls(config["model_cfg"], config.get("preprocess_cfg", {}),
                   ClipInfo(**{f.name: info[f.name] for f in fields if f.name in info}))


def write_clip(out_dir: str | Path, state_dict: dict[str, torch.Tensor], config: ClipConfig) -> None:
    """A stage-2 model: fp32 `model.safetensors` in open_clip's key layout + its `ClipConfig`."""
    save_file(_fp32_cpu(state_dict), str(Path(out_dir) / CLIP_WEIGHTS_FILE), metadata={"format": "pt", "stage": "2"})
    config.write(out_dir)


def write_hf_text_files(out_dir: str | Path, hf_folder: str | Path, tokenizer: Any) -> None:
    """An HF text tower's config + tokenizer files under `out_dir/hf_text/`, so the run exports without
    the original model folder (`tokenizer`: open_clip's `HFTokenizer`)."""
    from transformers import AutoConfig
    dest = Path(out_dir) / HF_TEXT_DIR
    AutoConfig.from_pretrained(str(hf_folder), local_files_only=True).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


# ---- what a finished run says about itself --------------------------------------------------------
@dataclass
class RunSummary:
    """A run folder's own account of how it ran (either stage): its resolved config (None when the
    folder has no config.yaml), the train/data sections both stages share, its evaluations, the world
    size of its last process and the last step it logged."""
    folder: Path
    config: Optional[dict[str, Any]]
    train: Optional[TrainConfig]
    data: Optional[DataConfig]
    evals: list[EvalRecord]
    world_size: Optional[int]
    last_step: Optional[int]

    @property
    def global_batch(self) -> Optional[int]:
        """Samples per optimizer step (batch_size × grad_accum × world size), when all three are known."""
        if self.train is None or self.world_size is None:
            return None
        return self.train.batch_size * self.train.grad_accum * self.world_size

    @classmethod
    def read(cls, folder: str | Path) -> "RunSummary":
        folder = Path(folder)
        config = read_resolved_config(folder)
        where = str(folder / CONFIG_FILE)
        train = build(TrainConfig, config["train"], where, "train.") if config and "train" in config else None
        data = build(DataConfig, config["data"], where, "data.") if config and "data" in config else None
        metrics = MetricsFile(folder)
        starts = metrics.starts()
        steps = [r["step"] for r in metrics.read() if "step" in r]
        return cls(folder, config, train, data, metrics.evals(), starts[-1]["world_size"] if starts else None,
                   max(steps) if steps else None)
