"""Building one training run, before anything trains: the accelerator and the `RunContext`, the run's
checks (`validate_run`), the checkpoint to resume from (refused under another schedule), the task, the
model (after the seed), the optimizer and schedule, compilation, and accelerate's `prepare`. `Trainer`
(`common.train.engine`) runs what this builds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from accelerate.utils import set_seed
from torch import nn

from common.artifacts import write_config
from common.config.schema import to_dict, validate_run
from common.config.sections import OptimConfig, TrainConfig
from common.errors import ConfigError
from common.run_context import RunContext
from common.train.accelerator import abandon, make_accelerator, run_context
from common.train.checkpoint import CheckpointStore
from common.train.compile import compile_in_place
from common.train.optim import build_optimizer, build_scheduler
from common.train.task import Task, TaskFactory, supports_contrastive_groups


@dataclass
class BuiltRun:
    """A run ready to train: its config's `train`/`optim` sections, the process's context, the prepared
    model and optimizer (DDP / DeepSpeed-wrapped), the LR schedule, the task, and where it resumes from."""
    train: TrainConfig
    optim: OptimConfig
    context: RunContext
    accelerator: Any
    task: Task
    model: nn.Module
    optimizer: Any
    scheduler: Any
    checkpoints: CheckpointStore
    compiled: list[str]  # the names of the modules `train.compile` compiled
    schedule: dict[str, int]  # what a resume must match: steps, samples per step, contrastive batch
    resume_from: Path | None
    resolved_config: dict[str, Any]  # the whole config, as config.yaml holds it
    num_workers: Optional[int]  # data.num_workers, when the config has a data section

    @property
    def run_dir(self) -> Path:
        return Path(self.train.output_dir)


def schedule_of(train: TrainConfig, context: RunContext) -> dict[str, int]:
    """The figures a checkpoint is tied to (`EngineState.schedule`)."""
    return {"steps": train.steps, "samples_per_step": context.samples_per_step,
            "contrastive_batch": context.contrastive_batch}


def make_task(make: TaskFactory, context: RunContext, seed: int) -> Task:
    """The task, made after the run's seed is set; refuses contrastive accumulation it cannot do."""
    set_seed(seed)  # torch's start-up seed is random: nothing may depend on it
    task = make(context)
    if context.contrastive_accum > 1 and not supports_contrastive_groups(task):
        raise ConfigError(f"train.contrastive_accum={context.contrastive_accum}: this stage scores each sample on "
                          "its own, so there are no negatives to add — use train.grad_accum")
    return task


def build_run(config: Any, make: TaskFactory, resume: str | None = None) -> BuiltRun:
    """Build the run of `config` (a stage's root config) with the task `make` makes; `resume`: `--resume`.
    A failure after the accelerator exists (bad input found by the run's checks) undoes it first."""
    accelerator = make_accelerator(config.train)
    try:
        return _build_on(accelerator, config, make, resume)
    except BaseException:
        abandon(accelerator)
        raise


def _build_on(accelerator: Any, config: Any, make: TaskFactory, resume: str | None) -> BuiltRun:
    train, optim = config.train, config.optim
    context = run_context(accelerator, train)
    validate_run(config, context)  # the disk, registries, machine and run checks: ConfigError before any model
    checkpoints = CheckpointStore(accelerator, Path(train.output_dir), train, context)
    schedule = schedule_of(train, context)
    resume_from = checkpoints.find_resume(resume, schedule)
    if context.is_main:
        write_config(train.output_dir, config)
    task = make_task(make, context, train.seed)
    set_seed(train.seed)  # identical initial weights on every rank, whatever the task drew
    model = task.build_model()
    optimizer = build_optimizer(task.param_groups(model), optim)
    # the scheduler (stepped by the engine, once per optimizer step) is saved in the engine's JSON marker,
    # not registered with accelerate, which would unpickle it with weights_only=False at --resume
    scheduler = build_scheduler(optimizer, optim, train.steps)
    # in place: state-dict names stay, DDP and DeepSpeed wrap what looks like an eager module
    compiled = compile_in_place(model, train.compile, train.compile_backend)
    model, optimizer = accelerator.prepare(model, optimizer)
    data = getattr(config, "data", None)
    return BuiltRun(train, optim, context, accelerator, task, model, optimizer, scheduler, checkpoints, compiled,
                    schedule, resume_from, to_dict(config), getattr(data, "num_workers", None))
