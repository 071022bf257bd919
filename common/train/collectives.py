"""The engine's own cross-rank calls, named, under the process-group timeout `train.dist_timeout_s`.

A rank that stops answering (hung in I/O, a dead node, a deadlock) makes every collective of the others
wait until the process group's timeout. `named(what, timeout_s)` turns that timeout (or a peer's closed
connection) into `CollectiveError`: one line naming the collective, the step and the timeout. Under NCCL
the watchdog aborts the process itself at the timeout, naming the collective (OpType) in its own message.

Control-plane votes (`max_over_ranks`, `gather_texts`) run on a CPU gloo group (the default group when it
is gloo, else one created for them), so they never synchronise an accelerator stream.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

from common.errors import RunFault

_TIMED_OUT = re.compile(r"timed out|timeout", re.IGNORECASE)
_PEER_GONE = re.compile(r"connection (closed|reset) by peer|broken pipe|connection refused", re.IGNORECASE)
_cpu_group: dict[str, object] = {}


class CollectiveError(RunFault):
    """A collective failed because another rank stopped answering or exited; the message is one line."""


@contextmanager
def named(what: str, timeout_s: float) -> Iterator[None]:
    """Run a collective; a timeout or a vanished peer becomes a one-line `CollectiveError` about `what`."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as err:  # gloo and NCCL errors (DistBackendError included) are RuntimeErrors
        text = str(err)
        if _TIMED_OUT.search(text):
            raise CollectiveError(f"{what} timed out after {timeout_s:g} s (train.dist_timeout_s) waiting for "
                                  "another rank — it hung or died; see that rank's log, then --resume auto") from err
        if _PEER_GONE.search(text):
            raise CollectiveError(f"{what} failed: another rank exited (its connection closed) — see that "
                                  "rank's log, then --resume auto") from err
        raise


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cpu_group(timeout_s: float) -> object | None:
    """A gloo group over all ranks (None: the default group, when it is gloo). Created on first use, which
    every rank reaches at the same point of the loop."""
    if dist.get_backend() == "gloo":
        return None
    if "group" not in _cpu_group:
        _cpu_group["group"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return _cpu_group["group"]


def max_over_ranks(value: int, what: str, timeout_s: float) -> int:
    """The largest `value` any rank passed (every rank must call it at the same point)."""
    if not distributed():
        return value
    flag = torch.tensor([value], dtype=torch.int64)
    with named(what, timeout_s):
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=cpu_group(timeout_s))
    return int(flag.item())


def gather_texts(text: str, what: str, timeout_s: float) -> list[str]:
    """Every rank's `text`, rank 0 first (every rank must call it at the same point)."""
    if not distributed():
        return [text]
    texts: list[str] = [""] * dist.get_world_size()
    with named(what, timeout_s):
        dist.all_gather_object(texts, text, group=cpu_group(timeout_s))
    return texts
