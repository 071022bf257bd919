"""ContrastiveLoss across ranks: each of W gloo processes (spawned here) computes its loss and gradients on its
slice of one seeded global batch; `assert_ranks_equal_one_process` combines them the way DDP does and compares
them with one process on the whole batch (fp32, within 1e-6)."""
from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from stage2_contrastive.objective import ContrastiveLoss
from tests.support.launch import free_port

GLOBAL_BATCH, DIM, TOL = 8, 16, 1e-6
KINDS = ("softmax", "sigmoid")


def global_batch(kind: str) -> dict[str, torch.Tensor]:
    """The same seeded batch on every process: features [GLOBAL_BATCH, DIM] fp32 (+ scalars)."""
    gen = torch.Generator().manual_seed(0)
    batch = {"image": F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=gen), dim=-1),
             "text": F.normalize(torch.randn(GLOBAL_BATCH, DIM, generator=gen), dim=-1)}
    if kind == "softmax":
        return dict(batch, logit_scale=torch.tensor(1 / 0.07))
    return dict(batch, logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-math.log(GLOBAL_BATCH - 1)))


def loss_and_grads(kind: str, rank: int, world_size: int) -> dict[str, torch.Tensor]:
    """Rank `rank`'s loss and the gradients its backward leaves on its own leaves: its feature rows
    [GLOBAL_BATCH / world_size, DIM] and its replica of logit_scale (and logit_bias)."""
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    leaves = {name: (t[rows] if t.dim() else t).clone().requires_grad_(True)
              for name, t in global_batch(kind).items()}
    loss = ContrastiveLoss(kind, rank, world_size)(leaves["image"], leaves["text"], leaves["logit_scale"],
                                                   leaves.get("logit_bias"))
    loss.backward()
    return {"loss": loss.detach(), **{name: t.grad for name, t in leaves.items()}}


def worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        results = {kind: loss_and_grads(kind, rank, world_size) for kind in KINDS}
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


def run_ranks(world_size: int, out_dir: Path) -> list[dict[str, dict[str, torch.Tensor]]]:
    if world_size == 1:
        worker(0, 1, free_port(), str(out_dir))  # in this process: no spawn cost, same code path
    else:
        mp.spawn(worker, args=(world_size, free_port(), str(out_dir)), nprocs=world_size, join=True)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(world_size)]


def assert_ranks_equal_one_process(ranks: list[dict[str, torch.Tensor]], single: dict[str, torch.Tensor]):
    """What DDP over W ranks would see equals one process on the concatenated batch (loss L).

    loss:     rank r returns its share L_r; the mean over ranks is the global loss, (1/W)·Σ_r L_r = L.
    features: the backward of the all-gather (softmax) or of the ring exchange (sigmoid texts) brings
              every rank's loss home, so rank r's rows get g_r = Σ_s ∂L_s/∂f_r = ∂(W·L)/∂f_r = W·∂L/∂f_r
              (sigmoid image rows never leave their rank: only L_r depends on them, same identity).
              DDP averages parameter gradients: (1/W)·Σ_r J_rᵀ g_r = Σ_r J_rᵀ ∂L/∂f_r = ∂L/∂θ exactly
              when g_r / W equals the single-process gradient of rows r — which is what is compared.
    scalars:  logit_scale / logit_bias are replicated; rank r's gradient is ∂L_r/∂s, and DDP's average
              (1/W)·Σ_r ∂L_r/∂s = ∂L/∂s is compared with the single-process gradient.
    """
    world = len(ranks)
    torch.testing.assert_close(sum(r["loss"] for r in ranks) / world, single["loss"], rtol=0, atol=TOL)
    for name in ("image", "text"):
        rows_of_all_ranks = torch.cat([r[name] for r in ranks])
        torch.testing.assert_close(rows_of_all_ranks / world, single[name], rtol=0, atol=TOL,
                                   msg=lambda m, name=name: f"{name} feature gradient: {m}")
    for name in single.keys() - {"loss", "image", "text"}:
        torch.testing.assert_close(sum(r[name] for r in ranks) / world, single[name], rtol=0, atol=TOL,
                                   msg=lambda m, name=name: f"{name} gradient: {m}")
