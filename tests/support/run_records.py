"""What a finished run folder says about how it ran — its `metrics.jsonl` records (losses, the start record
each training process logs) and its final weights — and the check every resume test makes with them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from common.artifacts import EngineState, MetricsFile, checkpoint_dir, read_metrics
from common.train.checkpoint.manifest import seal


def losses(run_dir: Path) -> dict[int, float]:
    """step → logged training loss."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def loss_records(run_dir: Path) -> list[dict[str, Any]]:
    """The training-loss records in file order (one per logged step if nothing was re-run)."""
    return [r for r in read_metrics(run_dir) if "loss" in r]


def start_records(run_dir: Path) -> list[dict[str, Any]]:
    """The record each process that trained into `run_dir` logged when it began (the engine's start record)."""
    return MetricsFile(run_dir).starts()


def assert_same_weights(a: Path, b: Path, weights_file: str = "model.safetensors") -> None:
    """The final weights file of two runs hold the same tensors, bit for bit."""
    wa, wb = load_file(str(a / weights_file)), load_file(str(b / weights_file))
    assert wa.keys() == wb.keys()
    differ = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


def assert_resumed_exactly(resumed: Path, reference: Path, from_step: int, world_size: int = 1,
                           weights_file: str = "model.safetensors") -> None:
    """`resumed` (a run logged every step) was started fresh, stopped, then resumed by a second process that
    began at the checkpoint of `from_step` with `world_size` processes; every step was logged exactly once,
    and its losses and final weights are bit-identical to those of the uninterrupted run `reference`."""
    starts = [(r["step"], r["resumed_from"] and Path(r["resumed_from"]).name, r["world_size"])
              for r in start_records(resumed)]
    assert starts == [(0, None, world_size), (from_step, checkpoint_dir('.', from_step).name, world_size)], starts
    steps = [r["step"] for r in loss_records(reference)]
    assert steps == list(range(1, len(steps) + 1)), steps
    assert [r["step"] for r in loss_records(resumed)] == steps  # no step re-run or lost
    assert losses(resumed) == losses(reference)
    assert_same_weights(resumed, reference, weights_file)


def reseal(checkpoint: Path) -> None:
    """Rewrite a checkpoint's manifest to match its files as they are now: a file replaced together with
    its manifest (by hand, or by someone who means harm) passes the integrity check and meets the next one."""
    seal(checkpoint, EngineState.read(checkpoint))
