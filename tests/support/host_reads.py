"""Counting the reads of tensor values on the host, the CPU stand-in for host-device syncs: on an accelerator
each of these waits for the device; on a CPU it is what would wait. `with HostReadCounter() as counter:`
counts, in `counter.calls`, every call made from Python (a torch function mode: torch's own C++ calls are not
seen; torch's classes are left as they are — assigning `Tensor.__getitem__` and deleting it again leaves
`torch.tensor([t0, t1])` of 0-d tensors broken for the rest of the process) of
- the Tensor methods that return host values: `.item()`, `.tolist()`, `.numpy()`, `np.asarray(t)`, `.cpu()`,
  `bool(t)`, `int(t)`, `float(t)`, and `.nonzero()` / `torch.nonzero`;
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

import torch
from torch.overrides import TorchFunctionMode

VALUE_READS = {"item", "tolist", "numpy", "__array__", "cpu", "__bool__", "__int__", "__float__", "nonzero", "equal"}


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


def is_host_read(func: Any, args: tuple, kwargs: dict) -> bool:
    """Whether the torch call `func(*args, **kwargs)` reads a tensor value on the host (see the module doc)."""
    name = getattr(func, "__name__", "")
    if name in VALUE_READS:
        return True
    if name == "to":
        return copies_to_host(args[0], args[1:], kwargs)
    if name == "__getitem__":
        return has_bool_mask(args[1])
    return False


class HostReadCounter(TorchFunctionMode):
    """`calls`: how many host reads of tensor values happened while it was active (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if is_host_read(func, args, kwargs):
            self.calls += 1
        return func(*args, **kwargs)
