"""The tiny real models the tests train: their config overrides and command lines, and the run context of
one CPU process (for tasks built outside the engine)."""
from __future__ import annotations

from pathlib import Path

import torch

from common.run_context import RunContext

STAGE1_CONFIG = "configs/stage1/fmnist_tiny.yaml"
STAGE2_CONFIG = "configs/stage2/fmnist_tiny.yaml"

# Tiny but real: the registered Eva at 28 px (2×2 patches) and a 2-layer text tower.
TINY_STAGE2 = [
    "model.embed_dim=32", "model.text.context_length=16", "model.text.width=32", "model.text.heads=2",
    "model.text.layers=2", "data.image_size=28", "data.num_workers=0", "data.shuffle_buffer=64",
    "data.eval_max_samples=64", "data.eval_batch_size=32", "train.batch_size=8", "train.log_every=1",
    "train.progress=false", "train.tensorboard=false", "optim.warmup_steps=2",
]


def single_process_run(micro_batch: int = 8) -> RunContext:
    """The RunContext of one CPU process without DeepSpeed (tasks built outside the engine)."""
    return RunContext(rank=0, world_size=1, device=torch.device("cpu"), micro_batch=micro_batch, grad_accum=1,
                      precision="fp32", deepspeed=False)


def stage1_overrides(fmnist_shards: Path, out: Path, teacher_export: Path, *extra: str) -> list[str]:
    """The tiny stage-1 run at 56 px (4×4 patches) against the `local-dir:` teacher `teacher_export`."""
    return [f"teacher.model=local-dir:{teacher_export}", f"train.output_dir={out}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            "data.image_size=56", "data.num_workers=0", "data.eval_max_samples=32",
            "data.final_eval_max_samples=32", "train.batch_size=8", "train.log_every=1", "train.progress=false",
            "train.tensorboard=false", "optim.warmup_steps=1", "mask.min_block=2", *extra]


def stage1_args(fmnist_shards: Path, out: Path, teacher_export: Path, *extra: str) -> list[str]:
    """The stage-1 command line (after the program name) of `stage1_overrides`."""
    return ["--config", STAGE1_CONFIG, *stage1_overrides(fmnist_shards, out, teacher_export, *extra)]


def one_line_error(capsys) -> str:
    """What a command printed on stderr, checked to be one line and no traceback."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err
