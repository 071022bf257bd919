"""One stage-2 training step through the real task: `ContrastiveTask` builds the model and its loss
(`loss_fn`, wired to this process's rank and world size), the model is prepared by accelerate (DDP when
there are several processes) and `task.training_loss` + `accelerator.backward` run on a fixed global batch
of GLOBAL_BATCH image-caption pairs, of which rank r takes rows [r·B, (r+1)·B), B = GLOBAL_BATCH / W.

Under torchrun: `python -m tests.support.tasks.stage2_step OUT_DIR SHARD_DIR` (SHARD_DIR holds train/ and test/
shards with classnames.txt); `run_step` is the same code for one process, called in-process.
Writes OUT_DIR/{loss kind}_rank{r}_of{W}.pt: {"loss": this rank's loss [], "grads": {name: grad}}, the
gradients as the optimizer would see them (DDP-averaged over ranks).
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from common.config.schema import load_config
from common.train.accelerator import make_accelerator, run_context
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.support.launch import ROOT
from tests.support.tiny import TINY_STAGE2

GLOBAL_BATCH = 8
KINDS = ("softmax", "sigmoid")


def stage2_config(kind: str, shard_dir: str, world_size: int) -> Stage2Config:
    """The tiny test model (tests/support/tiny.py) with the per-process batch that makes GLOBAL_BATCH."""
    return load_config(Stage2Config, str(ROOT / "configs/stage2/fmnist_tiny.yaml"), [
        f"loss={kind}", f"data.train_shards={shard_dir}/train", f"data.eval_shards={shard_dir}/test",
        *TINY_STAGE2, f"train.batch_size={GLOBAL_BATCH // world_size}"])


def make_task(cfg: Stage2Config, accelerator: Any) -> ContrastiveTask:
    """The task under test, handed the run context the engine builds from this process's accelerator."""
    return ContrastiveTask(cfg, run_context(accelerator, cfg.train))


def global_batch(task: ContrastiveTask) -> dict[str, torch.Tensor]:
    """GLOBAL_BATCH seeded images [G, 3, S, S] and tokenized captions of distinct classes [G, context]."""
    size = task.cfg.data.image_size
    images = torch.randn(GLOBAL_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    classnames = task.data.classnames
    captions = [f"a photo of a {classnames[i % len(classnames)]}." for i in range(GLOBAL_BATCH)]
    return {"image": images, "text": task.tokenizer(captions)}


def run_step(kind: str, shard_dir: str, accelerator: Any) -> dict[str, Any]:
    """This process's loss and the parameter gradients after backward (DDP-averaged under DDP)."""
    rank, world_size = accelerator.process_index, accelerator.num_processes
    task = make_task(stage2_config(kind, shard_dir, world_size), accelerator)
    torch.manual_seed(0)  # as the engine does before build_model: the same initial weights everywhere
    model = accelerator.prepare(task.build_model())
    model.train()
    local = GLOBAL_BATCH // world_size
    batch = {k: v[rank * local:(rank + 1) * local].to(accelerator.device) for k, v in global_batch(task).items()}
    with accelerator.autocast():
        loss, _ = task.training_loss(model, batch)
    accelerator.backward(loss)
    grads = {name: p.grad.detach().clone() for name, p in accelerator.unwrap_model(model).named_parameters()
             if p.grad is not None}
    return {"loss": loss.detach(), "grads": grads}


def main(out_dir: str, shard_dir: str) -> None:
    from common.config.sections import TrainConfig
    accelerator = make_accelerator(TrainConfig())  # the engine's accelerator: DDP over gloo on CPU
    for kind in KINDS:
        result = run_step(kind, shard_dir, accelerator)
        name = f"{kind}_rank{accelerator.process_index}_of{accelerator.num_processes}.pt"
        torch.save(result, Path(out_dir) / name)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
