"""Across 2 gloo processes each loss equals the single-process loss on the concatenated batch, and so
do the gradients DDP would apply (within 1e-6, fp32)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from stage2_contrastive.loss import ContrastiveLoss
from tests.launch import free_port

GLOBAL_BATCH, DIM, WORLD = 8, 16, 2


def global_batch() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=gen), dim=-1)
    txt = F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=gen), dim=-1)
    return img, txt, torch.tensor(7.0), torch.tensor(-3.0)


def loss_and_grads(kind: str, rank: int, world: int, img, txt, scale, bias) -> dict[str, torch.Tensor]:
    leaves = [t.clone().requires_grad_(True) for t in (img, txt, scale, bias)]
    fn = ContrastiveLoss(kind, rank, world)
    loss = fn(*leaves[:3]) if kind == "softmax" else fn(*leaves)
    loss.backward()
    return {"loss": loss.detach(), "img": leaves[0].grad, "txt": leaves[1].grad, "scale": leaves[2].grad,
            "bias": leaves[3].grad if kind == "sigmoid" else torch.zeros(())}


def worker(rank: int, port: int, kind: str, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    img, txt, scale, bias = global_batch()
    part = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    queue.put((rank, loss_and_grads(kind, rank, WORLD, img[part], txt[part], scale, bias)))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_two_ranks_equal_one_rank(kind):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, kind, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in range(WORLD))
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    single = loss_and_grads(kind, 0, 1, *global_batch())
    # loss: each rank returns its share; their mean is the global loss
    mean_loss = sum(results[r]["loss"] for r in range(WORLD)) / WORLD
    assert torch.allclose(mean_loss, single["loss"], atol=1e-6), (mean_loss, single["loss"])
    # features: the exchange's backward sums every rank's loss into each rank's features, i.e.
    # grad_r = Σ_r' ∂L_r'/∂f_r = W · ∂L_global/∂f_r; DDP's 1/W averaging turns it into the global gradient
    for key in ("img", "txt"):
        stacked = torch.cat([results[r][key] for r in range(WORLD)]) / WORLD
        assert torch.allclose(stacked, single[key], atol=1e-6), key
    # replicated scalars: each rank's grad is ∂L_r/∂s; DDP averages them
    for key in ("scale", "bias"):
        averaged = sum(results[r][key] for r in range(WORLD)) / WORLD
        assert torch.allclose(averaged, single[key], atol=1e-6), key
