"""The run folder's map: every file and folder a run writes, named once, with the paths between them and
typed readers for the run-level records.

    RUN/config.yaml                   the resolved config                          write_config / read_config
    RUN/metrics.jsonl                 one JSON record per line                     MetricsFile
    RUN/tensorboard/                  TensorBoard scalars (common.train.metrics)
    RUN/checkpoints/step_XXXXXXXX/    one checkpoint (owned by common.train.checkpoint):
        <accelerate's / DeepSpeed's files>  model, optimizer, RNG states
        weights/                      the task's weights files, as at the run's top level
        engine_state.json             written last: a folder without it is never resumed from   EngineState
    RUN/checkpoints/step_XXXXXXXX.universal/   DeepSpeed's universal form of a checkpoint, made to resume it
                                      on another number of processes; removed once loaded       universal_dir
    RUN/.weights.tmp/                 the next top-level weights, until completely written
    RUN/student_trunk.safetensors     stage 1: the timm trunk                      (common.weights.formats)
    RUN/model.safetensors             stage 2: the CLIP in open_clip's key layout  (common.weights.formats)
    RUN/open_clip_config.json         stage 2: open_clip's model_cfg + evaclip's ClipInfo
    RUN/hf_text/                      stage 2 with a Hugging Face text tower: its config + tokenizer
    RUN/wandb_run_id, RUN/wandb/      with train.wandb: the wandb run's id (a resume continues it), its files

The top-level weights are the newest; every checkpoint holds its own in `weights/`. An export folder
(`common.export`) holds `open_clip_config.json` + `open_clip_model.safetensors` in open_clip's own layout.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from common.config.schema import load_config, read_yaml, to_dict
from common.errors import NotARunError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_WEIGHTS_DIR = "weights"  # inside a checkpoint, beside accelerate's own files (no name shared)
ENGINE_STATE_FILE = "engine_state.json"  # written last into a checkpoint: its completion marker
WEIGHTS_STAGING_DIR = ".weights.tmp"
TRUNK_FILE = "student_trunk.safetensors"
CLIP_WEIGHTS_FILE = "model.safetensors"
CLIP_CONFIG_FILE = "open_clip_config.json"
HF_TEXT_DIR = "hf_text"
WANDB_ID_FILE = "wandb_run_id"  # the Weights & Biases run this run logs to (train.wandb): a resume continues it
WANDB_DIR = "wandb"  # wandb's own files (offline runs)
OPEN_CLIP_WEIGHTS_FILE = "open_clip_model.safetensors"  # an export folder's weights: what open_clip's loaders read
STEP_DIR = re.compile(r"^step_(\d+)$")


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
@dataclass(frozen=True)
class EvalRecord:
    """One evaluation of a run: the step it ran after and its metrics (zero-shot top-k and retrieval
    recall as fractions in [0, 1] for stage 2; the probe for stage 1)."""
    step: int
    metrics: dict[str, float]


class MetricsFile:
    """`RUN/metrics.jsonl`: records appended one per line; `step` orders them. Kinds: a `start` record per
    process start (`event: start`), one per logged step (`loss`), evaluations (`eval`), `preempted`."""

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

    def evals(self) -> list[EvalRecord]:
        """The evaluation records, in file order."""
        return [EvalRecord(r["step"], r["eval"]) for r in self.read() if "eval" in r]

    def starts(self) -> list[dict[str, Any]]:
        """The record each training process logged when it began (step, resumed_from, batch, …)."""
        return [r for r in self.read() if r.get("event") == "start"]

    def truncate_after(self, step: int) -> None:
        """Drop records after `step` (what a crashed run logged past the checkpoint a resume starts from)."""
        kept = [r for r in self.read() if r.get("step", 0) <= step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    return MetricsFile(run_dir).read()


# ---- checkpoints/ --------------------------------------------------------------------------------
@dataclass
class EngineState:
    """`engine_state.json`, what the engine keeps beside accelerate's state. Written last, it marks a
    checkpoint complete and lists every other file of it (`files`: relative path → {"bytes", "sha256"},
    filled by `common.train.checkpoint`)."""
    step: int
    bad_steps: int = 0
    skipped_samples: int = 0
    schedule: dict[str, int] = field(default_factory=dict)  # what a resume must match (`build.schedule_of`)
    source_draws: dict[str, int] = field(default_factory=dict)  # samples drawn per training source, all ranks
    scheduler: dict[str, Any] = field(default_factory=dict)  # the LR scheduler's state_dict (plain JSON)
    data_start: Optional[int] = None  # the step the data stream started at (None: `step`)
    data_seed_step: Optional[int] = None  # the step whose seed the stream was started with (None: data_start)
    rollbacks: int = 0  # loss-spike rollbacks so far (`train.spike`)
    recent_losses: list[float] = field(default_factory=list)  # the spike rule's window
    world_size: Optional[int] = None  # processes that wrote it
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # the manifest

    def write(self, checkpoint: Path) -> None:
        (Path(checkpoint) / ENGINE_STATE_FILE).write_text(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def read(cls, checkpoint: Path) -> "EngineState":
        values = json.loads((Path(checkpoint) / ENGINE_STATE_FILE).read_text())
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def checkpoint_weights_dir(checkpoint: str | Path) -> Path:
    """Where a checkpoint holds the task's weights files."""
    return Path(checkpoint) / CHECKPOINT_WEIGHTS_DIR


def universal_dir(run_dir: str | Path, checkpoint: str | Path) -> Path:
    """Where `checkpoint` is converted to DeepSpeed's universal checkpoint (to be resumed on another number of
    processes by the run in `run_dir`): beside the run's own checkpoints, never a `step_X` name."""
    return Path(run_dir) / CHECKPOINTS_DIR / f"{Path(checkpoint).name}.universal"


def complete_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first (temp or unmarked folders are ignored)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / ENGINE_STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / ENGINE_STATE_FILE).is_file()


def _checkpoint_of(weights_folder: Path) -> Optional[Path]:
    """The checkpoint a weights folder belongs to (its `weights/` folder), else None."""
    if weights_folder.name == CHECKPOINT_WEIGHTS_DIR and STEP_DIR.match(weights_folder.parent.name):
        return weights_folder.parent
    return None


def weights_folders(path: str | Path) -> list[Path]:
    """Where weights files may sit for `path`, in the order to look: the folder itself (a run's top level,
    an export), a checkpoint's `weights/`, then a run's checkpoints' `weights/`, newest first."""
    path = Path(path)
    if is_checkpoint(path):
        return [checkpoint_weights_dir(path), path]
    return [path] + [checkpoint_weights_dir(c) for c in complete_checkpoints(path)[::-1]]


def find_weights(run_dir: str | Path, filename: str, what: str) -> Path:
    """`filename` in a run folder (top level), one of its checkpoints (newest first), or the file itself."""
    path = Path(run_dir)
    if path.is_file():
        return path
    for folder in weights_folders(path):
        if (folder / filename).is_file():
            return folder / filename
    raise NotARunError(f"'{path}' is not a {what} run folder or checkpoint (no {filename} in it or under "
                       f"{CHECKPOINTS_DIR}/) — pass the train.output_dir of a finished run")


def run_folder_of(weights_file: str | Path) -> Path:
    """The run folder a weights file belongs to: its own folder, or the run above `checkpoints/step_X/`."""
    folder = Path(weights_file).parent
    checkpoint = _checkpoint_of(folder)
    if checkpoint is not None and checkpoint.parent.name == CHECKPOINTS_DIR:
        return checkpoint.parent.parent
    return folder


def weights_step(weights_file: str | Path) -> Optional[int]:
    """The step a weights file was saved at: its checkpoint's, or for the run's top-level (newest) weights
    the newest complete checkpoint's; None when the run has no checkpoint."""
    folder = Path(weights_file).parent
    checkpoint = _checkpoint_of(folder)
    if checkpoint is not None and is_checkpoint(checkpoint):
        return EngineState.read(checkpoint).step
    newest = complete_checkpoints(folder)
    return EngineState.read(newest[-1]).step if newest else None
