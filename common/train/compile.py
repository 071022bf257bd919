"""`train.compile`: torch.compile of what a training step runs, in place, so nothing is renamed.

- `none` (default): eager.
- `model`: the whole module (`nn.Module.compile()`: the forward becomes one compiled graph).
- `blocks` (regional compilation): each repeated block (each member of an `nn.ModuleList` whose members
  all share one class: timm Eva blocks, open_clip text blocks, Hugging Face encoder layers) is compiled;
  with dynamo's inlining of nn modules (torch ≥ 2.5) the blocks share ONE graph, compiled once and
  reused, so the warm-up is one block's instead of the whole model's.

`nn.Module.compile()` swaps the module's call for a compiled one and keeps the module itself: its class,
its parameters and its state-dict names (no `_orig_mod.` prefix, unlike `torch.compile(module)`), so
checkpoints, `accelerate.unwrap_model`, DDP, DeepSpeed, the exported weights and `--init` see an eager
module's names. Grad checkpointing (timm's `checkpoint(block, …)`) calls a compiled block, and patch
dropout runs inside the compiled trunk.
"""
from __future__ import annotations

import logging
from typing import get_args

from torch import nn

from common.config.sections import CompileMode
from common.errors import ConfigError

COMPILE_MODES: tuple[str, ...] = get_args(CompileMode)

log = logging.getLogger("evaclip")


def repeated_blocks(module: nn.Module) -> list[nn.Module]:
    """The members of every outermost `nn.ModuleList` in `module` with ≥ 2 members of one class, in order."""
    if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(m) for m in module}) == 1:
        return list(module)
    return [block for child in module.children() for block in repeated_blocks(child)]


def compile_in_place(module: nn.Module, mode: str, backend: str = "inductor", what: str = "model") -> int:
    """Compile `module` in place under `mode` (see the module docstring) with torch.compile's `backend`;
    returns how many modules were compiled (0 for `none`). `what` names the module in the log line."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode '{mode}' — use one of {', '.join(COMPILE_MODES)} "
                         "(config key: train.compile)")
    if mode == "none":
        return 0
    targets = [module] if mode == "model" else repeated_blocks(module)
    if not targets:
        raise ConfigError(f"train.compile=blocks: the {what} ({type(module).__name__}) has no repeated blocks "
                         "(no nn.ModuleList of one block class) — use train.compile=model")
    for target in targets:
        target.compile(backend=backend)
    log.info("train.compile=%s: %s compiled (%d module%s)", mode, what, len(targets), "s" * (len(targets) > 1))
    return len(targets)
