"""One optimizer step of the real stage-2 task through the engine in fp64, with `train.contrastive_accum=K`
micro-batches of B per rank: the loss the step returns and the gradients the optimizer is handed (captured
in place of `optimizer.step`; clipping off, so their scale is the loss's) — and, as the reference, the
loss and gradients of ONE batch of the same K·B samples per rank: a plain forward + backward of the same
(DDP-wrapped) model on the K micro-batches concatenated.

Under torchrun: `python -m tests.support.tasks.accum_step OUT_DIR SHARD_DIR` writes
OUT_DIR/{loss kind}_rank{r}_of{W}.pt: {"accumulated" | "big": {"loss": [], "grads": {name: grad}}};
`first_step` is the same code for one process, called in-process.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from common.config.schema import load_config
from common.train.engine import Trainer
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.support.launch import ROOT
from tests.support.tiny import TINY_STAGE2

ACCUM, GROUP_BATCH = 4, 8  # K, and the per-rank contrastive batch K·B
KINDS = ("softmax", "sigmoid")
TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}  # fp64: the two orders of summation agree to ~1e-14


class Fp64ContrastiveTask(ContrastiveTask):
    """The stage-2 task with an fp64 model and fp64 images (so sums in another order agree to ~1e-15)."""

    def build_model(self) -> nn.Module:
        return super().build_model().double()

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        for batch in super().train_batches(seed):
            yield dict(batch, image=batch["image"].double())


def accum_config(kind: str, shard_dir: str, out_dir: str, accum: int) -> Stage2Config:
    return load_config(Stage2Config, str(ROOT / "configs/stage2/fmnist_tiny.yaml"), [
        f"loss={kind}", f"data.train_shards={shard_dir}/train", f"data.eval_shards={shard_dir}/test",
        *TINY_STAGE2, f"train.batch_size={GROUP_BATCH // accum}", f"train.contrastive_accum={accum}",
        "train.grad_clip=0", f"train.output_dir={out_dir}"])


def gradients(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def first_step(kind: str, shard_dir: str, out_dir: str) -> dict[str, Any]:
    """{"accumulated" | "big": {"loss": this rank's share, "grads": {name: gradient}}, "trainer": …}."""
    cfg = accum_config(kind, shard_dir, out_dir, ACCUM)
    trainer = Trainer.build(cfg, lambda run: Fp64ContrastiveTask(cfg, run))
    model = trainer.accelerator.unwrap_model(trainer.model)
    micro_batches = list(itertools.islice(trainer.batches(), ACCUM))  # the step's K micro-batches
    one_batch = {key: torch.cat([b[key] for b in micro_batches]) for key in ("image", "text")}
    big_loss, _ = trainer.task.training_loss(trainer.model, one_batch)
    big_loss.backward()
    big = {"loss": big_loss.detach(), "grads": gradients(model)}
    trainer.run.optimizer.zero_grad(set_to_none=True)
    captured: dict[str, torch.Tensor] = {}
    trainer.run.optimizer.step = lambda *a, **k: captured.update(gradients(model))
    loss, _, _ = trainer.step(iter(micro_batches))
    return {"accumulated": {"loss": loss.detach(), "grads": captured}, "big": big, "trainer": trainer}


def assert_same_step(accumulated: dict, big: dict) -> None:
    """An accumulated step's loss and gradients equal the one big batch's (TOLERANCE), and every trained
    tensor got a gradient."""
    torch.testing.assert_close(accumulated["loss"], big["loss"], **TOLERANCE)
    assert set(accumulated["grads"]) == set(big["grads"])
    assert all(g.abs().max() > 0 for g in big["grads"].values())  # every trained tensor gets a gradient
    for name, grad in big["grads"].items():
        torch.testing.assert_close(accumulated["grads"][name], grad, **TOLERANCE,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def main(out_dir: str, shard_dir: str) -> None:
    trainer = None
    for kind in KINDS:
        result = first_step(kind, shard_dir, f"{out_dir}/run_{kind}")
        trainer = result.pop("trainer")
        torch.save(result, Path(out_dir) / f"{kind}_rank{trainer.context.rank}_of{trainer.context.world_size}.pt")
    trainer.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
