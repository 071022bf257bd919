"""The linear task (`tests.support.tasks.linear_task`) under whatever launcher started it, dumping the consolidated
training state at every checkpoint it writes and right after a resume loaded one — for the tests of a
resume on another number of processes.

    python -m tests.multiprocess.resume_probe OUT_DIR DUMP_DIR [key=value ...] [--resume SPEC] [--stop-at N]

The state (`consolidated_state`): per parameter its fp32 value and Adam's `exp_avg`, `exp_avg_sq` and step,
gathered whole — under DeepSpeed ZeRO through DeepSpeed's own `safe_get_full_fp32_param` /
`safe_get_full_optimizer_state` (collectives: every rank calls them), under DDP from the optimizer each
rank holds whole — plus every param group's hyperparameters, rank 0's torch seed and accelerate's
accumulation counter. Rank 0 writes `DUMP_DIR/<when>_step<N>.pt`
(`when`: `saved` after a checkpoint, `resumed` after a load). `--stop-at N` ends the run cleanly (exit 0)
after its checkpoint of step N, as a job that ran out of time would have stopped.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from common.config.schema import load_config
from common.train.engine import Trainer
from tests.support.tasks.linear_task import LinearConfig, LinearTask

ADAM_STATES = ("exp_avg", "exp_avg_sq")


class StopHere(Exception):
    pass


def consolidated_state(trainer: Trainer) -> dict[str, Any]:
    """The whole training state of every rank's shards, the same on every rank (collective under ZeRO)."""
    model, deepspeed = trainer.model, trainer.context.deepspeed
    params: dict[str, dict[str, torch.Tensor]] = {}
    if deepspeed:
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
        inner = model.optimizer.optimizer  # the torch optimizer DeepSpeed steps on its flat partitions
        if hasattr(model.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO-1/2
            # DeepSpeed links each parameter's view of the Adam moments after the optimizer's first step of
            # param group 0, before group 1 has any state: link again, now that every group has its moments
            model.optimizer._hp_optimizer_states_linked = False
            model.optimizer._lazy_init_hp_params_optimizer_state()
        for name, p in model.module.named_parameters():
            params[name] = {"param": safe_get_full_fp32_param(p).detach().float().cpu().clone(),
                            **{k: safe_get_full_optimizer_state(p, k).detach().float().cpu().clone()
                               for k in ADAM_STATES}}
        steps = sorted({float(s["step"]) for s in inner.state.values() if "step" in s})
        groups = inner.param_groups
    else:
        inner = trainer.run.optimizer.optimizer  # accelerate's AcceleratedOptimizer wraps the torch one
        for name, p in trainer.accelerator.unwrap_model(model).named_parameters():
            state = inner.state.get(p, {})  # none: the optimizer was not loaded (zeros then, as Adam starts)
            params[name] = {"param": p.detach().float().cpu().clone(),
                            **{k: state.get(k, torch.zeros_like(p)).detach().float().cpu().clone()
                               for k in ADAM_STATES}}
        steps = sorted({float(s["step"]) for s in inner.state.values() if "step" in s})
        groups = inner.param_groups
    hyper = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
              if k in ("lr", "weight_decay", "betas", "eps", "lr_scale")} for g in groups]
    return {"params": params, "adam_steps": steps, "param_groups": hyper, "step": trainer.steps_done,
            "world_size": trainer.context.world_size, "torch_seed": torch.initial_seed(),
            "accumulation_counter": trainer.accelerator.step}


class ProbeTrainer(Trainer):
    def __init__(self, run, dumps: Path, stop_at: int):
        self.dumps, self.stop_at = dumps, stop_at
        super().__init__(run)
        if run.resume_from is not None:
            self.dump("resumed")

    def dump(self, when: str) -> None:
        state = consolidated_state(self)
        if self.context.is_main:
            self.dumps.mkdir(parents=True, exist_ok=True)
            torch.save(state, self.dumps / f"{when}_step{self.steps_done}.pt")

    def save(self):
        saved = super().save()
        self.dump("saved")
        if self.steps_done == self.stop_at:
            raise StopHere()
        return saved


def run_probe(out: str, dumps: Path, overrides: list[str], resume: str | None, stop_at: int) -> Path:
    from common.train.build import build_run
    cfg = load_config(LinearConfig, None, [f"train.output_dir={out}", *overrides])
    trainer = ProbeTrainer(build_run(cfg, lambda run: LinearTask(cfg, run), resume), dumps, stop_at)
    try:
        trainer.fit()
    except StopHere:
        pass
    finally:
        trainer.close()
    return Path(out)


def main(argv: list[str]) -> int:
    from common.train.cli import exit_status
    from common.train.logs import setup_logging
    setup_logging()
    out, dumps, rest = argv[0], Path(argv[1]), argv[2:]
    options = {"--resume": None, "--stop-at": "-1"}
    overrides: list[str] = []
    args = iter(rest)
    for arg in args:
        if arg in options:
            options[arg] = next(args)
        else:
            overrides.append(arg)
    return exit_status(lambda: run_probe(out, dumps, overrides, options["--resume"], int(options["--stop-at"])))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
