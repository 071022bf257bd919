"""Accelerator construction (CPU/GPU, DDP, DeepSpeed ZeRO via accelerate's plugin) and clean shutdown.

CPU specifics measured in CPU_NOTES.md: gloo backend; DeepSpeed needs `DS_ACCELERATOR=cpu` set before
it is imported, and its shared-memory comm op (a ~40 s JIT compile) is switched off.
"""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

import torch

from common.config import ConfigError
from common.sections import TrainConfig

ZERO_STAGES = (0, 1, 2, 3)


def read_deepspeed_json(path: str) -> dict[str, Any]:
    """A DeepSpeed JSON (`train.deepspeed`), checked: it exists, parses, and its ZeRO stage exists."""
    if not Path(path).is_file():
        raise ConfigError(f"DeepSpeed config '{path}' not found — set train.deepspeed to one of "
                          "configs/deepspeed/zero{1,2,3}.json")
    try:
        ds = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"DeepSpeed config '{path}' is not valid JSON ({err}) — fix the file") from err
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise ConfigError(f"ZeRO stage {stage!r} in '{path}' does not exist — use 0, 1, 2 or 3")
    return ds


def load_deepspeed_config(path: str, cfg: TrainConfig) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill what the engine owns (micro batch, accumulation, clipping)."""
    ds = read_deepspeed_json(path)
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum
    ds["gradient_clipping"] = cfg.grad_clip
    ds.pop("train_batch_size", None)
    ds.setdefault("zero_allow_untested_optimizer", True)  # our optimizer is timm's AdamW/LAMB
    ds["bf16"] = {"enabled": cfg.precision == "bf16"}
    ds["fp16"] = {"enabled": cfg.precision == "fp16"}
    return ds


def _prepare_deepspeed_env() -> None:
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed.ops
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def make_accelerator(cfg: TrainConfig):
    """An `accelerate.Accelerator` for this run: precision, accumulation, DeepSpeed plugin, gloo on CPU."""
    from accelerate import Accelerator, DeepSpeedPlugin
    from accelerate.utils import InitProcessGroupKwargs

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    on_cpu = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and distributed else []
    kwargs: dict[str, Any] = {}
    if cfg.deepspeed:
        _prepare_deepspeed_env()
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=load_deepspeed_config(cfg.deepspeed, cfg))
    elif on_cpu:
        kwargs["cpu"] = True
    return Accelerator(mixed_precision="no" if cfg.precision == "fp32" else cfg.precision,
                       gradient_accumulation_steps=cfg.grad_accum, kwargs_handlers=handlers, **kwargs)


def shutdown(accelerator: Any, model: Any) -> None:
    """Tear down cleanly (ZeRO-3 can abort at exit otherwise: CPU_NOTES.md)."""
    accelerator.wait_for_everyone()
    if hasattr(model, "destroy"):  # a DeepSpeed engine
        model.destroy()
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
