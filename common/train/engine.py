"""The ONE training loop both stages run, on accelerate (DDP, mixed precision, DeepSpeed ZeRO).

A stage hands `train()` its config and a task factory: given the run's `RunContext` (rank, world size,
device, batch geometry) it makes a `Task`, which builds the model and its param groups, makes the data
stream, computes the loss of a batch and evaluates. The engine owns everything else: devices,
precision, compilation, gradient accumulation and clipping, optimizer and schedule, the non-finite guard
(on the device, read at log steps: step_guard.py), logging, progress bar, periodic eval, atomic
checkpoints and exact resume. No model is built before the run's seed is set.

Exact resume: the data stream is rebuilt at every periodic checkpoint step from a seed derived from
(train.seed, step) (a preemption checkpoint records the step its stream started at, and a resume moves
that stream on to its step), and accelerate's state holds model, optimizer, scaler and RNG, the engine's
marker the LR schedule; so a run resumed from step k sees the same batches and draws the same random
numbers as one never stopped. Faults (`docs/ARCHITECTURE.md`, "Failures"): preemption signals
(`preemption`), failed checkpoint writes (`checkpoint_write`), damaged or untrusted checkpoints
(`checkpoint`), ranks that stop answering (`collectives`).
"""
from __future__ import annotations

import gc
import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from accelerate.utils import set_seed
from torch import nn

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, write_config
from common.config.schema import ConfigError
from common.evaluation.dist import gather_objects
from common.train import checkpoint as ckpt
from common.train.accelerator import make_accelerator, run_context, shutdown
from common.train.checkpoint_write import CheckpointWrite, publish_weights
from common.train.collectives import CollectiveError, named
from common.train.compile import compile_in_place
from common.train.context import RunContext
from common.train.metrics import MetricsLogger
from common.train.optim import build_optimizer, build_scheduler
from common.train.preemption import Preempted, PreemptionWatch
from common.train.step_guard import OK, NonFiniteError, StepWindow, gated_step, poison_non_finite, step_status

__all__ = ["NonFiniteError", "Task", "TaskFactory", "Trainer", "data_seed", "train"]

log = logging.getLogger("evaclip")


class Task(Protocol):
    """What a stage supplies to the engine (made by a `TaskFactory` from the run's `RunContext`)."""

    def build_model(self) -> nn.Module:
        """The model to train, randomly initialised from the seed the engine has just set."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]: ...

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        """An endless, deterministic stream of this rank's batches (a function of `seed` and the context).
        The engine takes two optional keys out of a batch: `skipped` ([B] bad samples skipped before each
        sample) and `source` (B names of the training sources the samples came from)."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """The scalar loss of a batch and extra scalars to log (plain floats or 0-d tensors)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called with the number of optimizer steps done (skipped ones included): after every step,
        and once before the first step of a run, fresh (0) or resumed (the checkpoint's step)."""

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, Any]:
        """Called on every rank with the unwrapped model, under no_grad and the run's autocast; returns the
        (already reduced) metrics, or {}: numbers, or a dict of numbers per named eval set. `final`: the
        end-of-run evaluation (`data.final_eval_max_samples`, default the whole split), else a periodic one
        (`data.eval_max_samples`)."""

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Main process only: write the consolidated weights a user exports from (`common.artifacts`)."""


class ContrastiveGroupTask(Task, Protocol):
    """A task that also supports `train.contrastive_accum` K > 1 (stage 2); the engine refuses K > 1 for
    any other (`hasattr(task, "contrastive_group")`)."""

    def contrastive_group(self, model: nn.Module, batches: list[dict[str, Any]]
                          ) -> Iterator[tuple[torch.Tensor, dict]]:
        """Score K micro-batches as ONE contrastive batch: yield K (loss, extras), one per backward pass.
        The engine back-propagates each before asking for the next; the K gradients sum to the gradient
        of the group's loss, and each yielded loss has that loss's value."""


TaskFactory = Callable[[RunContext], Task]


def data_seed(seed: int, step: int) -> int:
    """Seed of the data stream (re)started at `step`: the same in a resumed and an uninterrupted run."""
    return seed * 1_000_003 + step


def _to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype | None) -> dict:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if float_dtype is not None and value.is_floating_point():
                value = value.to(float_dtype)
        out[key] = value
    return out


class Trainer:
    """State of one training run, built from the run's config (its `train` and `optim` sections) and a
    task factory; `fit()` runs it, `close()` tears the process group down."""

    def __init__(self, config: Any, make_task: TaskFactory, resume: str | None = None):
        self.config, self.cfg, self.optim_cfg = config, config.train, config.optim
        self.run_dir = Path(self.cfg.output_dir)
        self.accelerator = acc = make_accelerator(self.cfg)
        self.run = run_context(acc, self.cfg)
        self.is_main, self.is_deepspeed = self.run.is_main, self.run.deepspeed
        validate_run = getattr(config, "validate_run", None)
        if callable(validate_run):
            validate_run(self.run)  # checks that depend on the run (world size, DeepSpeed): ConfigError
        if resume == "auto" and self.cfg.remote_dir:
            self._restore_from_remote()
        self.resume_from = ckpt.agreed_resume(acc, resume, self.run_dir) if resume else None
        self.schedule = {"steps": self.cfg.steps, "global_batch": self.run.global_batch,
                         "contrastive_batch": self.run.contrastive_batch}
        if self.resume_from is not None:
            ckpt.check_same_schedule(self.resume_from, self.schedule)
        if self.is_main:
            write_config(self.run_dir, config)
        set_seed(self.cfg.seed)  # torch's start-up seed is random: nothing may depend on it
        self.task = make_task(self.run)
        if self.run.contrastive_accum > 1 and not hasattr(self.task, "contrastive_group"):
            raise ConfigError(f"train.contrastive_accum={self.run.contrastive_accum}: this stage scores each "
                              "sample on its own, so there are no negatives to add — use train.grad_accum")
        set_seed(self.cfg.seed)  # identical initial weights on every rank, whatever the task drew
        model = self.task.build_model()
        optimizer = build_optimizer(self.task.param_groups(model), self.optim_cfg)
        self.scheduler = build_scheduler(optimizer, self.optim_cfg, self.cfg.steps)
        # in place: state-dict names stay, DDP and DeepSpeed wrap what looks like an eager module
        self.compiled = compile_in_place(model, self.cfg.compile, self.cfg.compile_backend)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # the scheduler (stepped by us, once per optimizer step) is saved in the engine's JSON marker, not
        # registered with accelerate, which would unpickle it with weights_only=False at --resume
        self.input_dtype = torch.bfloat16 if (self.is_deepspeed and self.cfg.precision == "bf16") else None
        self.step = 0
        self.window = StepWindow(self.cfg.max_bad_steps, self.run_dir)  # step outcomes, read at log/save
        self.source_draws: Counter[str] = Counter()  # all ranks, up to the last log or save
        self.new_draws: Counter[str] = Counter()  # this rank's since then
        self.data_start = 0  # the step whose seed started the current data stream
        self.peers_lost = False  # a collective failed: tear down without waiting for the other ranks
        torch.manual_seed(self.cfg.seed + self.run.rank)  # per-rank dropout / drop-path
        if self.resume_from is not None:
            self._load(self.resume_from)
        self.logger = MetricsLogger(self.run_dir, self.cfg.tensorboard, enabled=self.is_main)

    # ---- checkpoints -------------------------------------------------------------------------
    def _load(self, path: Path) -> None:
        ckpt.require_tensors_only_checkpoint(path, self.is_deepspeed)  # before anything unpickles it
        try:
            self.accelerator.load_state(str(path))
        except Exception as err:  # noqa: BLE001 - whatever the loader raises, the checkpoint is unusable
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ConfigError(f"--resume {path}: cannot load this checkpoint ({type(err).__name__}: {first}) — "
                              "it is damaged or was written for another model; resume from an earlier "
                              "checkpoint or train into a new train.output_dir") from err
        state = EngineState.read(path)
        self.step = state.step
        self.window.bad_total, self.window.skipped_samples = state.bad_steps, state.skipped_samples
        self.source_draws = Counter(state.source_draws)
        self.data_start = state.step if state.data_start is None else state.data_start
        self.scheduler.load_state_dict(state.scheduler)
        if self.is_main:  # drop records the crashed run logged after this checkpoint
            MetricsFile(self.run_dir).truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def _restore_from_remote(self) -> None:
        """`--resume auto` on a run folder without a complete checkpoint: fetch the newest remote one."""
        from common.train.remote import restore_if_empty
        if self.is_main:
            restore_if_empty(self.cfg.remote_dir, self.run_dir)
        self.accelerator.wait_for_everyone()

    def save(self) -> Path | None:
        """Atomic checkpoint of the whole training state + consolidated weights for export. A write that
        fails on any rank (full disk…) removes the partial folder and stops the run, or with
        `train.checkpoint_errors: warn` goes on without it (None)."""
        acc = self.accelerator
        self.window.settle()  # the counts the checkpoint holds (and the bad-step limit) are current
        final = checkpoint_dir(self.run_dir, self.step)
        write = CheckpointWrite(acc, final, ckpt.temp_path(final), self.cfg.checkpoint_errors,
                                self.cfg.dist_timeout_s)
        self._merge_draws()
        write.attempt(lambda: acc.save_state(str(write.tmp)))
        if write.agree():  # every rank's RNG/optimizer shard is in `tmp`
            state_dict = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards (collective)
            if self.is_main:
                state = EngineState(self.step, self.window.bad_total, self.window.skipped_samples, self.schedule,
                                    source_draws=dict(self.source_draws), scheduler=self.scheduler.state_dict(),
                                    data_start=self.data_start)
                write.attempt(lambda: self.task.save_weights(state_dict, write.tmp))
                write.attempt(lambda: ckpt.finalize(write.tmp, final, state, self.cfg.keep_last))
                write.attempt(lambda: publish_weights(self.task.save_weights, state_dict, self.run_dir))
                if self.cfg.remote_dir and final.is_dir():  # after the local write is complete (remote.py)
                    from common.train.remote import RemoteRun
                    RemoteRun(self.cfg.remote_dir).push_checkpoint(self.run_dir, final, self.cfg.keep_last)
        return final if write.finish() else None

    # ---- one optimizer step ------------------------------------------------------------------
    def _next_batch(self, batches: Iterator[dict]) -> dict:
        batch = next(batches)
        self.window.count_skipped(batch.pop("skipped", None))
        self.new_draws.update(batch.pop("source", ()))
        return _to_device(batch, self.accelerator.device, self.input_dtype)

    def _loss_passes(self, batches: Iterator[dict]) -> Iterator[tuple[torch.Tensor, dict]]:
        """The (loss, extras) of each backward pass of one optimizer step, computed when asked for (inside
        that pass's accumulate/autocast context): `grad_accum` groups of `contrastive_accum` passes; a
        group of K > 1 micro-batches is scored as one contrastive batch by the task's `contrastive_group`."""
        group = self.run.contrastive_accum
        for _ in range(self.cfg.grad_accum):
            if group == 1:
                yield self.task.training_loss(self.model, self._next_batch(batches))
            else:
                yield from self.task.contrastive_group(self.model, [self._next_batch(batches) for _ in range(group)])

    def _train_step(self, batches: Iterator[dict]) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Forward/backward over `grad_accum` × `contrastive_accum` passes and one optimizer step, with no
        host-device sync (`common.train.step_guard`). Returns, on the device: the mean loss, the step's
        status (OK, or why the whole group was skipped) and the extras to log (the last pass's +
        grad_norm)."""
        acc, losses, finite = self.accelerator, [], []
        self.model.train()
        passes = self._loss_passes(batches)
        # accelerate (and DeepSpeed) divide each backward by all passes; a contrastive group's K passes
        # each carry a part of ONE loss's gradient, so they are scaled back by K
        group = self.run.contrastive_accum
        for _ in range(self.run.backward_passes):
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, extras = next(passes)
                loss, loss_finite = poison_non_finite(loss)  # a bad pass poisons the group's gradients
                with named(f"step {self.step + 1}: backward (DDP's gradient all-reduce)", self.cfg.dist_timeout_s):
                    acc.backward(loss * group if group > 1 else loss)
            losses.append(loss.detach())
            finite.append(loss_finite)
        if not acc.sync_gradients:
            raise RuntimeError("accelerate's accumulation counter is out of step with the backward passes")
        status, grad_norm = self._optimizer_step(torch.stack(finite).all())
        if grad_norm is not None:
            extras = dict(extras, grad_norm=grad_norm)
        self.scheduler.step()
        self.task.after_optimizer_step(acc.unwrap_model(self.model), self.step + 1)
        return torch.stack(losses).mean(), status, extras

    def _optimizer_step(self, losses_finite: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Clip, step (a no-op when the gradients are non-finite), zero the gradients: (status, grad norm)."""
        if self.is_deepspeed:  # DeepSpeed clipped and stepped inside `backward`, or discarded the update
            applied = self.model.was_step_applied()  # a host flag: DeepSpeed's step read its overflow check
            skipped = None if applied else torch.full((), math.nan, device=losses_finite.device)
            return step_status(losses_finite, skipped), self.model.get_global_grad_norm()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        status = step_status(losses_finite, grad_norm)
        if self.accelerator.scaler is not None:
            self.optimizer.step()  # fp16: GradScaler skips a non-finite step itself and halves its scale
        else:
            gated_step(self.optimizer, status != OK)
        self.optimizer.zero_grad(set_to_none=True)
        return status, grad_norm

    # ---- the loop ----------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict]:
        """The stream started at `data_start` (seeded by it), moved on to `step`: restarted at a periodic
        checkpoint it starts right there; resumed from a preemption checkpoint it skips what was trained."""
        batches = iter(self.task.train_batches(data_seed(self.cfg.seed, self.data_start)))
        for _ in range((self.step - self.data_start) * self.run.backward_passes):
            next(batches)
        return batches

    def _merge_draws(self) -> None:
        """Add every rank's draws per source since the last merge to the run's totals (a collective; no
        rank has any without mixed sources, and every rank some after a step with them: all skip or none)."""
        if not self.new_draws:
            return
        for draws in gather_objects([dict(self.new_draws)]):
            self.source_draws.update(draws)
        self.new_draws.clear()

    def _log(self, extras: dict, t0: float, samples: int) -> None:
        """One loss record: the window's outcomes are read back here (the step's only host sync)."""
        acc = self.accelerator
        self.window.settle()
        losses = self.window.take_losses()  # of the applied steps since the last record
        mean_loss = torch.tensor([sum(losses) / len(losses) if losses else math.nan])
        if acc.num_processes > 1:
            with named(f"step {self.step}: the all-reduce of the logged loss", self.cfg.dist_timeout_s):
                mean_loss = acc.reduce(mean_loss.to(acc.device), reduction="mean")
        record = {"step": self.step, "loss": float(mean_loss), "lr": self.scheduler.get_last_lr()[0],
                  "samples_per_s": samples / max(time.perf_counter() - t0, 1e-9),
                  "bad_steps": self.window.bad_total, "skipped_samples": self.window.skipped_samples,
                  "world_size": acc.num_processes}
        record.update({k: float(v) for k, v in extras.items()})
        self._merge_draws()
        if self.source_draws:
            record["source_draws"] = dict(sorted(self.source_draws.items()))
        self.logger.log(record)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.4f}")

    def _start_record(self) -> dict[str, Any]:
        """What this process really runs, logged once at the start of `fit`: the step it starts at (the
        checkpoint's step on a resume), the world size, accelerate's distributed type and the ZeRO stage."""
        acc = self.accelerator
        plugin = getattr(acc.state, "deepspeed_plugin", None) if self.is_deepspeed else None
        return {"step": self.step, "event": "start",
                "resumed_from": str(self.resume_from) if self.resume_from is not None else None,
                "world_size": acc.num_processes, "distributed_type": acc.distributed_type.name,
                "zero_stage": plugin.zero_stage if plugin is not None else None,
                "precision": self.cfg.precision, "compile": self.cfg.compile, "compiled_modules": self.compiled}

    def _evaluate(self, final: bool = False) -> None:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.task.evaluate(self.accelerator.unwrap_model(self.model), final)
        if metrics:
            self.logger.log({"step": self.step, "eval": metrics})
            log.info("step %d eval %s", self.step, metrics)

    def fit(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        from tqdm.auto import tqdm
        self.bar = tqdm(total=cfg.steps, initial=self.step, desc=str(self.run_dir), dynamic_ncols=True,
                        disable=not (self.is_main and cfg.progress))
        global_batch = self.run.global_batch
        # before the data stream starts: its loader workers, forked later, inherit the handlers
        preemption = PreemptionWatch(cfg.dist_timeout_s).start()
        try:
            batches, t0, window = self._batches(), time.perf_counter(), 0
            self.logger.log(self._start_record())
            self.task.after_optimizer_step(acc.unwrap_model(self.model), self.step)
            while self.step < cfg.steps:
                loss, status, extras = self._train_step(batches)
                self.step += 1
                self.window.push(self.step, loss, status)
                window += global_batch
                self.bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(extras, t0, window)
                    t0, window = time.perf_counter(), 0
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                    self._evaluate()
                saved = None
                if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.steps:
                    self.data_start = self.step  # restart the stream where a resume would restart it
                    saved = self.save()
                    batches = self._batches()
                signal_name = preemption.agreed(self.step)
                if signal_name is not None:
                    self._stop(signal_name, saved if saved is not None else self.save())
            self._evaluate(final=True)
            self.save()
        except CollectiveError:
            self.peers_lost = True
            raise
        finally:
            preemption.stop()
            self.bar.close()
            self.logger.close()
        return self.run_dir

    def _stop(self, signal_name: str, checkpoint: Path | None) -> None:
        """Preempted: log why, then raise `Preempted` (the CLI exits with the requeue status)."""
        self.logger.log({"step": self.step, "event": "preempted", "signal": signal_name,
                         "checkpoint": str(checkpoint) if checkpoint is not None else None})
        raise Preempted(self.step, signal_name, checkpoint)

    def close(self) -> None:
        shutdown(self.accelerator, self.model, wait_for_peers=not self.peers_lost)
        del self.model, self.optimizer
        gc.collect()


def train(config: Any, make_task: TaskFactory, resume: str | None = None) -> Path:
    """Run the task `make_task` builds under `config.train` / `config.optim`; returns the run folder."""
    trainer = Trainer(config, make_task, resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
