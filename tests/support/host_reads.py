"""Counting the reads of tensor values on the host, the CPU stand-in for host-device syncs: on an accelerator
each of these waits for the device; on a CPU it is what would wait. Counted while installed (pytest's
monkeypatch undoes it):
- the Tensor methods that return host values: `.item()`, `.tolist()`, `.numpy()` (also `np.asarray(t)`),
  `.cpu()`, `bool(t)`, `int(t)`, `float(t)`, `.nonzero()`;
- `.to(...)` onto the host unless `non_blocking=True` (a blocking copy to the host waits for the device, a
  non-blocking one does not): the target named as the string "cpu" (how code that wants a value on the host
  writes it), or, for a tensor on another device, any CPU target. A `torch.device("cpu")` object given to a
  CPU tensor is not counted: it is what device placement passes (`t.device`, the run's device; torch's
  clipping and the stage-1 loss do it every step), a no-op on the accelerator, indistinguishable here;
- `torch.equal` / `Tensor.equal` (a Python bool of the values);
- indexing with a boolean mask (`t[mask]`, also inside a tuple index): its output size is the mask's count,
  which the host must read before it can allocate the result.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

VALUE_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "nonzero")


def _names_the_host(target: Any) -> bool:
    return isinstance(target, str) and torch.device(target).type == "cpu"


def _is_cpu(target: Any) -> bool:
    if isinstance(target, torch.Tensor):
        return target.device.type == "cpu"
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == "cpu"
    return False


def copies_to_host(tensor: torch.Tensor, args: tuple, kwargs: dict) -> bool:
    """Whether `tensor.to(*args, **kwargs)` is a blocking copy to the host (see the module doc)."""
    if kwargs.get("non_blocking") or (len(args) > 2 and isinstance(args[2], bool) and args[2]):
        return False  # to(device, dtype, non_blocking, ...)
    if len(args) > 1 and isinstance(args[0], torch.Tensor) and isinstance(args[1], bool) and args[1]:
        return False  # to(other, non_blocking, ...)
    target = kwargs.get("device", args[0] if args else None)
    return _names_the_host(target) or (tensor.device.type != "cpu" and _is_cpu(target))


def has_bool_mask(index: Any) -> bool:
    """Whether an index (or a part of a tuple index) is a boolean tensor."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts)


class HostReadCounter:
    """`calls`: how many host reads of tensor values happened since it was installed (see the module doc)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls = 0
        for name in VALUE_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self.counted(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.Tensor, "equal", self.counted(torch.Tensor.equal))
        monkeypatch.setattr(torch, "equal", self.counted(torch.equal))
        monkeypatch.setattr(torch.Tensor, "to", self.counted(torch.Tensor.to, when=copies_to_host))
        monkeypatch.setattr(torch.Tensor, "__getitem__", self.counted(
            torch.Tensor.__getitem__, when=lambda tensor, args, kwargs: has_bool_mask(args[0])))

    def counted(self, function: Any, when: Any = None) -> Any:
        """`function` (a tensor method or a torch function), counting its calls (those `when(first, args,
        kwargs)` says are reads; `first`: the tensor, or the first argument)."""
        def wrapper(first: Any, *args: Any, **kwargs: Any) -> Any:
            if when is None or when(first, args, kwargs):
                self.calls += 1
            return function(first, *args, **kwargs)
        return wrapper
