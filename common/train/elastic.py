"""The process group of a run that torchrun restarted (`--max-restarts`).

torchrun's c10d rendezvous hands every restart round the same agent-hosted TCPStore
(`TORCHELASTIC_USE_AGENT_STORE=True`), and torch opens the default group on it without a per-round
prefix. Gloo's full-mesh connect reads each peer's address from that store, so a new round can read the
address a rank of the previous round published: the connect is refused, or hangs until the group's
timeout, and the restart fails (measured here with torch 2.14: most restarts after a SIGKILLed worker).
`init_restarted_group` opens the group itself on the agent's store under a prefix of the round
(`TORCHELASTIC_RESTART_COUNT`); accelerate then finds the group initialised and uses it.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch.distributed as dist


def restart_round() -> int:
    """torchrun's restart count of this worker group (0: the first round, or not under torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def init_restarted_group(backend: str, timeout_s: float) -> bool:
    """Open the default process group (`backend`, the one accelerate would open) under a per-round store
    prefix when this is a restarted round on torchrun's agent store; False (nothing done) otherwise."""
    attempt = restart_round()
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or dist.is_initialized():
        return False
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timeout)
    dist.init_process_group(backend, store=dist.PrefixStore(f"evaclip/round_{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
    return True
