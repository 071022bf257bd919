"""The ONE training loop both stages run, on accelerate (DDP, mixed precision, DeepSpeed ZeRO).

`train(config, make_task, resume)` builds the run (`common.train.build`) and runs it with a `Trainer`:
`step()` is one optimizer step over `grad_accum` × `contrastive_accum` backward passes without a host
sync (the non-finite guard stays on the device: `step_guard`); `fit()` loops it with logging (throughput,
data wait and MFU: `telemetry`), the progress bar, periodic evaluation, checkpoints
(`common.train.checkpoint`), the loss-spike rule (`spike_guard`: warn, or roll back to the newest
checkpoint with the data stream re-seeded past the spike) and the preemption vote.

Exact resume: the data stream is rebuilt at every periodic checkpoint step from a seed derived from
(train.seed, step) (a preemption checkpoint records the step its stream started at, and a resume moves
that stream on to its step), and accelerate's state holds model, optimizer, scaler and RNG, the engine's
marker the LR schedule; so a run resumed from step k sees the same batches and draws the same random
numbers as one never stopped.
"""
from __future__ import annotations

import gc
import logging
import math
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from common.artifacts import EngineState
from common.train.accelerator import abandon, shutdown
from common.train.build import BuiltRun, build_run
from common.train.collectives import CollectiveError, named
from common.train.metrics import MetricsLogger
from common.train.preemption import Preempted, PreemptionWatch
from common.train.source_draws import SourceDraws
from common.train.spike_guard import LossSpikeError, Spike, SpikeGuard
from common.train.step_guard import OK, NonFiniteError, StepOutcomes, gated_step, poison_non_finite, step_status
from common.train.task import TaskFactory
from common.train.telemetry import Telemetry, peak_flops, progress_fields

__all__ = ["LossSpikeError", "NonFiniteError", "StepResult", "Trainer", "data_seed", "train"]

log = logging.getLogger("evaclip")


def data_seed(seed: int, step: int) -> int:
    """Seed of the data stream (re)started at `step`: the same in a resumed and an uninterrupted run."""
    return seed * 1_000_003 + step


def to_device(batch: dict[str, Any], device: torch.device, float_dtype: torch.dtype | None) -> dict[str, Any]:
    """A batch's tensors on `device` (floating ones cast to `float_dtype` when given); other values as they are."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if float_dtype is not None and value.is_floating_point():
                value = value.to(float_dtype)
        out[key] = value
    return out


class StepResult(NamedTuple):
    """One optimizer step, on the device: the mean loss of its passes, its status (`step_guard.OK`, or why
    the whole group was skipped) and the extras to log (the last pass's, + grad_norm)."""
    loss: torch.Tensor
    status: torch.Tensor
    extras: dict[str, Any]


class Trainer:
    """Runs a `BuiltRun`: `batches()` is this rank's data stream at the current step, `step(batches)` one
    optimizer step, `fit()` the whole run; `close()` tears the process group down."""

    def __init__(self, run: BuiltRun):
        self.run, self.cfg, self.context = run, run.train, run.context
        self.accelerator, self.task, self.model = run.accelerator, run.task, run.model
        self.input_dtype = torch.bfloat16 if (self.context.deepspeed and self.cfg.precision == "bf16") else None
        self.steps_done = 0
        self.outcomes = StepOutcomes(self.cfg.max_bad_steps, run.run_dir)  # step outcomes, read at log/save
        self.unlogged: list[tuple[int, float]] = []  # (step, loss) read but not yet in a loss record
        self.draws = SourceDraws()
        self.spikes = SpikeGuard(self.cfg.spike)
        self.rollbacks = 0
        self.data_start = 0  # the step the current data stream started at
        self.data_seed_step = 0  # the step whose seed started it (past a spike after a rollback)
        self.peers_lost = False  # a collective failed: tear down without waiting for the other ranks
        self.bar: Any = None
        self.resumed_world_size: int | None = None
        self.telemetry = self._telemetry()
        torch.manual_seed(self.cfg.seed + self.context.rank)  # per-rank dropout / drop-path
        if run.resume_from is not None:
            self._restore(run.checkpoints.load(run.resume_from))
        self.logger = MetricsLogger(run.run_dir, self.cfg.tensorboard, enabled=self.context.is_main,
                                    wandb=self.cfg.wandb, config=run.resolved_config)

    @classmethod
    def build(cls, config: Any, make_task: TaskFactory, resume: str | None = None) -> "Trainer":
        """A trainer of the run `build_run` builds from `config` and `make_task` (undone if it fails to start)."""
        run = build_run(config, make_task, resume)
        try:
            return cls(run)
        except BaseException:
            abandon(run.accelerator)
            raise

    def _telemetry(self) -> Telemetry:
        c = self.context
        peak, self.peak_source = peak_flops(c.device, self.cfg.precision, self.cfg.peak_tflops or 0.0)
        return Telemetry(c.samples_per_step, c.world_size, peak,
                         self.cfg.data_wait_warn, self.run.num_workers, detailed=self.cfg.telemetry)

    def _restore(self, state: EngineState) -> None:
        self.steps_done = state.step
        self.outcomes.bad_total, self.outcomes.skipped_samples = state.bad_steps, state.skipped_samples
        self.draws = SourceDraws(state.source_draws)
        self.data_start = state.step if state.data_start is None else state.data_start
        self.data_seed_step = self.data_start if state.data_seed_step is None else state.data_seed_step
        self.spikes = SpikeGuard(self.cfg.spike, state.recent_losses)
        self.rollbacks = state.rollbacks
        self.run.scheduler.load_state_dict(state.scheduler)
        if state.world_size is not None and state.world_size != self.context.world_size:
            log.info("resumed on %d processes from %d", self.context.world_size, state.world_size)
        self.resumed_world_size = state.world_size

    def save(self) -> Path | None:
        """A checkpoint of the whole training state at this step (`CheckpointStore.save`)."""
        self._read_losses(roll_back=False)  # the counts it holds (and the bad-step limit) are current
        self.draws.merge()
        state = EngineState(self.steps_done, self.outcomes.bad_total, self.outcomes.skipped_samples,
                            self.run.schedule, source_draws=self.draws.totals(),
                            scheduler=self.run.scheduler.state_dict(), data_start=self.data_start,
                            data_seed_step=self.data_seed_step, rollbacks=self.rollbacks,
                            recent_losses=self.spikes.state(), world_size=self.context.world_size)
        saved = self.run.checkpoints.save(state, self.model, self.task.save_weights)
        self.telemetry.restart()  # checkpoint time is not step time
        return saved

    # ---- one optimizer step ------------------------------------------------------------------
    def batches(self) -> Iterator[dict]:
        """This rank's stream started at `data_start` (seeded by `data_seed_step`: the same step, but past the
        spike after a rollback), moved on to `steps_done`: restarted at a periodic checkpoint it starts right
        there; resumed from a preemption checkpoint it skips what was trained."""
        batches = iter(self.task.train_batches(data_seed(self.cfg.seed, self.data_seed_step)))
        for _ in range((self.steps_done - self.data_start) * self.context.backward_passes):
            next(batches)
        return batches

    def _next_batch(self, batches: Iterator[dict]) -> dict:
        batch = self.telemetry.next_batch(batches)
        self.outcomes.count_skipped(batch.pop("skipped", None))
        self.draws.count(batch.pop("source", ()))
        return to_device(batch, self.accelerator.device, self.input_dtype)

    def _loss_passes(self, batches: Iterator[dict]) -> Iterator[tuple[torch.Tensor, dict]]:
        """The (loss, extras) of each backward pass of one optimizer step, computed when asked for (inside
        that pass's accumulate/autocast context): `grad_accum` groups of `contrastive_accum` passes; a
        group of K > 1 micro-batches is scored as one contrastive batch by the task's `contrastive_group`."""
        group = self.context.contrastive_accum
        for _ in range(self.cfg.grad_accum):
            if group == 1:
                yield self.task.training_loss(self.model, self._next_batch(batches))
            else:
                yield from self.task.contrastive_group(self.model, [self._next_batch(batches) for _ in range(group)])

    def step(self, batches: Iterator[dict]) -> StepResult:
        """One optimizer step: forward/backward over `grad_accum` × `contrastive_accum` passes, clipping, the
        update (a no-op when non-finite), the LR schedule; no host-device sync (`common.train.step_guard`).
        Its outcome is recorded for the next log read."""
        if self.telemetry.counts_flops():  # once per process, on the step's first batch, fetched here
            fetched = [self.telemetry.next_batch(batches) for _ in range(self.context.backward_passes)]
            self._count_flops(fetched[0])
            batches = iter(fetched)
        result = self._update(*self._passes(batches))
        self.telemetry.step_done()
        return result

    def _count_flops(self, batch: dict[str, Any]) -> None:
        """The FLOPs of one micro-batch's loss, forward and backward, counted on a pass of its own (the RNG
        states kept, no `.grad` written, the wrapped model's hooks not run): a counted step would round
        differently (torch's counter is a dispatch mode) and a resumed run would no longer equal an
        uninterrupted one."""
        model = self.accelerator.unwrap_model(self.model)
        inputs = to_device({k: v for k, v in batch.items() if k not in ("skipped", "source")},
                           self.accelerator.device, self.input_dtype)
        trained = [p for p in model.parameters() if p.requires_grad]
        devices = [self.context.device] if self.context.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.telemetry.counting_flops(self.context.micro_batch):
            with self.accelerator.autocast():
                loss, _ = self.task.training_loss(model, inputs)
            torch.autograd.grad(loss, trained, allow_unused=True)

    def _passes(self, batches: Iterator[dict]) -> tuple[list[torch.Tensor], list[torch.Tensor], dict]:
        """Forward and backward of every pass of one step: (losses, their finiteness, the last pass's extras)."""
        acc, losses, finite, extras = self.accelerator, [], [], {}
        self.model.train()
        passes = self._loss_passes(batches)
        # accelerate (and DeepSpeed) divide each backward by all passes; a contrastive group's K passes
        # each carry a part of ONE loss's gradient, so they are scaled back by K
        group = self.context.contrastive_accum
        for _ in range(self.context.backward_passes):
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, extras = next(passes)
                loss, loss_finite = poison_non_finite(loss)  # a bad pass poisons the group's gradients
                with named(f"step {self.steps_done + 1}: backward (DDP's gradient all-reduce)", self.cfg.dist_timeout_s):
                    acc.backward(loss * group if group > 1 else loss)
            losses.append(loss.detach())
            finite.append(loss_finite)
        return losses, finite, extras

    def _update(self, losses: list[torch.Tensor], finite: list[torch.Tensor], extras: dict) -> StepResult:
        """The optimizer step after the passes, the LR schedule, the task's hook; the outcome recorded."""
        acc = self.accelerator
        if not acc.sync_gradients:
            raise RuntimeError("accelerate's accumulation counter is out of step with the backward passes")
        status, grad_norm = self._optimizer_step(torch.stack(finite).all())
        if grad_norm is not None:
            extras = dict(extras, grad_norm=grad_norm)
        self.run.scheduler.step()
        self.steps_done += 1
        self.task.after_optimizer_step(acc.unwrap_model(self.model), self.steps_done)
        result = StepResult(torch.stack(losses).mean(), status, extras)
        self.outcomes.push(self.steps_done, result.loss, result.status)
        return result

    def _optimizer_step(self, losses_finite: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Clip, step (a no-op when the gradients are non-finite), zero the gradients: (status, grad norm)."""
        if self.context.deepspeed:  # DeepSpeed clipped and stepped inside `backward`, or discarded the update
            applied = self.model.was_step_applied()  # a host flag: DeepSpeed's step read its overflow check
            skipped = None if applied else torch.full((), math.nan, device=losses_finite.device)
            return step_status(losses_finite, skipped), self.model.get_global_grad_norm()
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm)
        status = step_status(losses_finite, grad_norm)
        if self.accelerator.scaler is not None:
            self.run.optimizer.step()  # fp16: GradScaler skips a non-finite step itself and halves its scale
        else:
            gated_step(self.run.optimizer, status != OK)
        self.run.optimizer.zero_grad(set_to_none=True)
        return status, grad_norm

    # ---- records -----------------------------------------------------------------------------
    def _read_losses(self, roll_back: bool = True) -> bool:
        """Read the step outcomes since the last read (one transfer; the window's only host sync), agree on
        the applied steps' losses across ranks (one all-reduce) and judge them (`train.spike`). Returns True
        when a spike rolled the run back (the caller restarts its data stream)."""
        self.outcomes.settle()
        read = self.outcomes.take_losses()
        if self.accelerator.num_processes > 1 and read:
            values = torch.tensor([loss for _, loss in read], device=self.accelerator.device)
            with named(f"step {self.steps_done}: the all-reduce of the logged losses", self.cfg.dist_timeout_s):
                values = self.accelerator.reduce(values, reduction="mean")
            read = list(zip((step for step, _ in read), values.tolist()))
        self.unlogged += read
        spikes = self.spikes.judge(read)
        for spike in spikes:
            log.warning("%s (train.spike.action=%s)", spike.describe(self.cfg.spike.factor), self.cfg.spike.action)
        if spikes and roll_back and self.cfg.spike.action == "rollback":
            return self._roll_back(spikes[0])
        return False

    def _roll_back(self, spike: Spike) -> bool:
        """Reload the newest checkpoint and re-seed the data stream past the steps that led to `spike`; stops
        the run after `train.max_rollbacks`. Returns False (going on) when there is no checkpoint yet."""
        what = spike.describe(self.cfg.spike.factor)
        if self.rollbacks >= self.cfg.max_rollbacks:
            raise LossSpikeError(f"{what}, after {self.rollbacks} rollbacks (train.max_rollbacks) — lower optim.lr "
                                 f"or raise train.grad_clip, look at the data near step {spike.step}, then --resume")
        target = self.run.checkpoints.newest()
        if target is None:
            log.warning("%s: no checkpoint to roll back to yet — going on", what)
            return False
        rollbacks = self.rollbacks + 1
        self._restore(self.run.checkpoints.load(target))
        self.rollbacks, self.data_seed_step, self.unlogged = rollbacks, spike.step, []
        skipped = [self.steps_done + 1, spike.step]
        self.logger.log({"step": self.steps_done, "event": "rollback", "spike_step": spike.step, "spike_loss": spike.loss,
                         "median": spike.median, "checkpoint": str(target), "skipped_steps": skipped,
                         "data_seed_step": spike.step, "rollbacks": rollbacks})
        log.warning("%s: rolled back to %s (rollback %d of at most %d); steps %d-%d are trained again on data "
                    "re-seeded past them", what, target.name, rollbacks, self.cfg.max_rollbacks, *skipped)
        if self.bar is not None:
            self.bar.n = self.steps_done
            self.bar.refresh()
        self.telemetry.restart()
        return True

    def _log(self, extras: dict) -> None:
        """One loss record of the steps read since the last record, with the window's speed (`telemetry`)."""
        losses = [loss for _, loss in self.unlogged]
        self.unlogged = []
        mean_loss = float(torch.tensor([sum(losses) / len(losses) if losses else math.nan]))  # float32, as logged
        record = {"step": self.steps_done, "loss": mean_loss, "lr": self.run.scheduler.get_last_lr()[0],
                  **self.telemetry.window(), "bad_steps": self.outcomes.bad_total,
                  "skipped_samples": self.outcomes.skipped_samples, "world_size": self.accelerator.num_processes}
        record.update({k: float(v) for k, v in extras.items()})
        self.draws.merge()
        if self.draws.total:
            record["source_draws"] = self.draws.totals()
        self.logger.log(record)
        if self.bar is not None:
            self.bar.set_postfix(progress_fields(record))

    def _start_record(self) -> dict[str, Any]:
        """What this process really runs, logged once at the start of `fit`: the step it starts at (the
        checkpoint's step on a resume), the batch figures, accelerate's distributed type, the ZeRO stage."""
        acc = self.accelerator
        plugin = getattr(acc.state, "deepspeed_plugin", None) if self.context.deepspeed else None
        return {"step": self.steps_done, "event": "start",
                "resumed_from": str(self.run.resume_from) if self.run.resume_from is not None else None,
                "world_size": acc.num_processes, "batch": self.context.batch_figures(),
                "distributed_type": acc.distributed_type.name,
                "zero_stage": plugin.zero_stage if plugin is not None else None,
                "precision": self.cfg.precision, "compile": self.cfg.compile, "compiled_modules": self.run.compiled,
                "resumed_from_world_size": self.resumed_world_size, **self.telemetry.start_fields(self.peak_source)}

    def _evaluate(self, final: bool = False) -> None:
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.task.evaluate(self.accelerator.unwrap_model(self.model), final)
        if metrics:
            self.logger.log({"step": self.steps_done, "eval": metrics})
            log.info("step %d eval %s", self.steps_done, metrics)
        self.telemetry.restart()  # evaluation time is not step time

    # ---- the run -----------------------------------------------------------------------------
    def fit(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        from tqdm.auto import tqdm
        self.bar = tqdm(total=cfg.steps, initial=self.steps_done, desc=str(self.run.run_dir), dynamic_ncols=True,
                        disable=not (self.context.is_main and cfg.progress))
        # before the data stream starts: its loader workers, forked later, inherit the handlers
        preemption = PreemptionWatch(cfg.dist_timeout_s).start()
        try:
            batches = self.batches()
            self.logger.log(self._start_record())
            self.task.after_optimizer_step(acc.unwrap_model(self.model), self.steps_done)
            self.telemetry.restart()
            while self.steps_done < cfg.steps:
                result = self.step(batches)
                self.bar.update(1)
                batches, saved = self._after_step(batches, result)
                signal_name = preemption.agreed(self.steps_done)
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
        return self.run.run_dir

    def _after_step(self, batches: Iterator[dict], result: StepResult) -> tuple[Iterator[dict], Path | None]:
        """Log, evaluate and checkpoint at their steps (a spike found by a read rolls back instead). Returns
        the data stream to go on with (restarted after a checkpoint or a rollback) and the checkpoint written."""
        cfg, step = self.cfg, self.steps_done
        if step % cfg.log_every == 0 or step == cfg.steps:
            if self._read_losses():
                return self.batches(), None
            self._log(result.extras)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
            self._evaluate()
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            if self._read_losses():  # a spike since the last log step: no checkpoint of it
                return self.batches(), None
            self.data_start = self.data_seed_step = step  # restart the stream where a resume would restart it
            saved = self.save()
            return self.batches(), saved
        return batches, None

    def _stop(self, signal_name: str, checkpoint: Path | None) -> None:
        """Preempted: log why, then raise `Preempted` (the CLI exits with the requeue status)."""
        self.logger.log({"step": self.steps_done, "event": "preempted", "signal": signal_name,
                         "checkpoint": str(checkpoint) if checkpoint is not None else None})
        raise Preempted(self.steps_done, signal_name, checkpoint)

    def close(self) -> None:
        shutdown(self.accelerator, self.model, wait_for_peers=not self.peers_lost)
        del self.model, self.run
        gc.collect()


def train(config: Any, make_task: TaskFactory, resume: str | None = None) -> Path:
    """Run the task `make_task` builds under `config.train` / `config.optim`; returns the run folder."""
    trainer = Trainer.build(config, make_task, resume)
    try:
        return trainer.fit()
    finally:
        trainer.close()
