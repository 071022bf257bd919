"""The ONE training loop both stages run, on accelerate (DDP, mixed precision, DeepSpeed ZeRO).

A stage hands `train()` its config and a task factory: given the run's `RunContext` (rank, world size,
device, batch geometry) it makes a `Task`, which builds the model and its param groups, makes the data
stream, computes the loss of a batch and evaluates. The engine owns everything else: devices,
precision, gradient accumulation and clipping, optimizer and schedule, the NaN guard, logging, progress
bar, periodic eval, atomic checkpoints and exact resume. No model is built before the run's seed is set.

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
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from accelerate.utils import set_seed
from torch import nn

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, complete_checkpoints, write_config
from common.config.schema import ConfigError
from common.train import checkpoint as ckpt
from common.train.accelerator import make_accelerator, run_context, shutdown
from common.train.checkpoint_write import CheckpointWrite, publish_weights
from common.train.collectives import CollectiveError, named
from common.train.context import RunContext
from common.train.metrics import MetricsLogger
from common.train.optim import build_optimizer, build_scheduler
from common.train.preemption import Preempted, PreemptionWatch

log = logging.getLogger("evaclip")


class Task(Protocol):
    """What a stage supplies to the engine (made by a `TaskFactory` from the run's `RunContext`)."""

    def build_model(self) -> nn.Module:
        """The model to train, randomly initialised from the seed the engine has just set."""

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]: ...

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        """An endless, deterministic stream of this rank's batches (a function of `seed` and the context)."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        """The scalar loss of a batch and extra scalars to log (plain floats or 0-d tensors)."""

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Called with the number of optimizer steps done (skipped ones included): after every step,
        and once before the first step of a run, fresh (0) or resumed (the checkpoint's step)."""

    def evaluate(self, model: nn.Module, final: bool) -> dict[str, float]:
        """Called on every rank with the unwrapped model, under no_grad and the run's autocast; returns the
        (already reduced) metrics, or {}. `final`: the end-of-run evaluation (`data.final_eval_max_samples`,
        default the whole split), else a periodic one (`data.eval_max_samples`)."""

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Main process only: write the consolidated weights a user exports from (`common.artifacts`)."""


TaskFactory = Callable[[RunContext], Task]


class NonFiniteError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient norm."""


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
        self.resume_from = ckpt.agreed_resume(acc, resume, self.run_dir) if resume else None
        self.schedule = {"steps": self.cfg.steps, "global_batch": self.run.global_batch}
        if self.resume_from is not None:
            ckpt.check_same_schedule(self.resume_from, self.schedule)
        if self.is_main:
            write_config(self.run_dir, config)
        set_seed(self.cfg.seed)  # torch's start-up seed is random: nothing may depend on it
        self.task = make_task(self.run)
        set_seed(self.cfg.seed)  # identical initial weights on every rank, whatever the task drew
        model = self.task.build_model()
        optimizer = build_optimizer(self.task.param_groups(model), self.optim_cfg)
        self.scheduler = build_scheduler(optimizer, self.optim_cfg, self.cfg.steps)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        # the scheduler (stepped by us, once per optimizer step) is saved in the engine's JSON marker, not
        # registered with accelerate, which would unpickle it with weights_only=False at --resume
        self.input_dtype = torch.bfloat16 if (self.is_deepspeed and self.cfg.precision == "bf16") else None
        self.step, self.bad_total, self.bad_run, self.skipped_samples = 0, 0, 0, 0
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
        self.step, self.bad_total, self.skipped_samples = state.step, state.bad_steps, state.skipped_samples
        self.data_start = state.step if state.data_start is None else state.data_start
        self.scheduler.load_state_dict(state.scheduler)
        if self.is_main:  # drop records the crashed run logged after this checkpoint
            MetricsFile(self.run_dir).truncate_after(self.step)
        log.info("resumed from %s at step %d", path, self.step)

    def save(self) -> Path | None:
        """Atomic checkpoint of the whole training state + consolidated weights for export. A write that
        fails on any rank (full disk…) removes the partial folder and stops the run, or with
        `train.checkpoint_errors: warn` goes on without it (None)."""
        acc = self.accelerator
        final = checkpoint_dir(self.run_dir, self.step)
        write = CheckpointWrite(acc, final, ckpt.temp_path(final), self.cfg.checkpoint_errors,
                                self.cfg.dist_timeout_s)
        write.attempt(lambda: acc.save_state(str(write.tmp)))
        if write.agree():  # every rank's RNG/optimizer shard is in `tmp`
            state_dict = acc.get_state_dict(self.model)  # gathers ZeRO-3 shards (collective)
            if self.is_main:
                state = EngineState(self.step, self.bad_total, self.skipped_samples, self.schedule,
                                    scheduler=self.scheduler.state_dict(), data_start=self.data_start)
                write.attempt(lambda: self.task.save_weights(state_dict, write.tmp))
                write.attempt(lambda: ckpt.finalize(write.tmp, final, state, self.cfg.keep_last))
                write.attempt(lambda: publish_weights(self.task.save_weights, state_dict, self.run_dir))
        return final if write.finish() else None

    # ---- one optimizer step ------------------------------------------------------------------
    def _all_finite(self, value: torch.Tensor) -> bool:
        flag = torch.isfinite(value.detach().float()).all().float().reshape(1)
        if self.accelerator.num_processes > 1:
            with named(f"step {self.step + 1}: the all-reduce of the finite-loss flag", self.cfg.dist_timeout_s):
                flag = self.accelerator.reduce(flag, reduction="mean")
        return bool(flag.item() == 1.0)

    def _train_step(self, batches: Iterator[dict]) -> tuple[torch.Tensor | None, dict]:
        """Forward/backward over `grad_accum` micro-batches and one optimizer step.
        Returns (mean loss or None if the step was skipped as non-finite, extras)."""
        acc, losses, extras = self.accelerator, [], {}
        self.model.train()
        for _ in range(self.cfg.grad_accum):
            batch = next(batches)
            self.skipped_samples += int(batch.pop("skipped", torch.zeros(1)).sum())
            batch = _to_device(batch, acc.device, self.input_dtype)
            with acc.accumulate(self.model), acc.autocast():
                loss, extras = self.task.training_loss(self.model, batch)
                if not self._all_finite(loss):
                    return self._skip_step("loss")
                with named(f"step {self.step + 1}: backward (DDP's gradient all-reduce)", self.cfg.dist_timeout_s):
                    acc.backward(loss)
                losses.append(loss.detach())
                if acc.sync_gradients and self.is_deepspeed:
                    # DeepSpeed clipped and stepped inside `backward`; on a non-finite norm its ZeRO
                    # optimizer discards the gradients instead (fp32/fp16), which we count like ours
                    if not self.model.was_step_applied():
                        return self._skip_step("gradient norm (DeepSpeed skipped its update)")
                    grad_norm = self.model.get_global_grad_norm()
                    if grad_norm is not None:
                        extras["grad_norm"] = float(grad_norm)
                elif acc.sync_gradients:
                    max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
                    if grad_norm is not None and not torch.isfinite(grad_norm):
                        return self._skip_step("gradient norm")
                    extras["grad_norm"] = grad_norm
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.task.after_optimizer_step(acc.unwrap_model(self.model), self.step + 1)
        self.bad_run = 0
        return torch.stack(losses).mean(), extras

    def _skip_step(self, what: str) -> tuple[None, dict]:
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.bad_total += 1
        self.bad_run += 1
        log.warning("step %d: non-finite %s, step skipped (%d in a row)", self.step + 1, what, self.bad_run)
        if self.bad_run >= self.cfg.max_bad_steps:
            last = complete_checkpoints(self.run_dir)
            where = f"last good checkpoint: {last[-1]}" if last else "no checkpoint was saved yet"
            raise NonFiniteError(f"{self.bad_run} consecutive non-finite steps at step {self.step + 1} — "
                                 f"{where}; lower optim.lr or raise train.grad_clip, then --resume")
        return None, {}

    # ---- the loop ----------------------------------------------------------------------------
    def _batches(self) -> Iterator[dict]:
        """The stream started at `data_start` (seeded by it), moved on to `step`: restarted at a periodic
        checkpoint it starts right there; resumed from a preemption checkpoint it skips what was trained."""
        batches = iter(self.task.train_batches(data_seed(self.cfg.seed, self.data_start)))
        for _ in range((self.step - self.data_start) * self.cfg.grad_accum):
            next(batches)
        return batches

    def _log(self, losses: list[torch.Tensor], extras: dict, t0: float, samples: int) -> None:
        acc = self.accelerator
        mean_loss = torch.stack(losses).mean().reshape(1) if losses else torch.full((1,), float("nan"))
        if acc.num_processes > 1:
            with named(f"step {self.step}: the all-reduce of the logged loss", self.cfg.dist_timeout_s):
                mean_loss = acc.reduce(mean_loss.to(acc.device), reduction="mean")
        record = {"step": self.step, "loss": float(mean_loss), "lr": self.scheduler.get_last_lr()[0],
                  "samples_per_s": samples / max(time.perf_counter() - t0, 1e-9),
                  "bad_steps": self.bad_total, "skipped_samples": self.skipped_samples,
                  "world_size": acc.num_processes}
        record.update({k: float(v) for k, v in extras.items()})
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
                "precision": self.cfg.precision}

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
            batches, losses, t0, window = self._batches(), [], time.perf_counter(), 0
            self.logger.log(self._start_record())
            self.task.after_optimizer_step(acc.unwrap_model(self.model), self.step)
            while self.step < cfg.steps:
                loss, extras = self._train_step(batches)
                self.step += 1
                window += global_batch
                if loss is not None:
                    losses.append(loss)
                self.bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log(losses, extras, t0, window)
                    losses, t0, window = [], time.perf_counter(), 0
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
