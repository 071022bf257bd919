"""Accelerator construction (CPU/GPU, DDP, DeepSpeed ZeRO via accelerate's plugin), the run context it
implies, and clean shutdown.

On CPU (docs/ARCHITECTURE.md, "What runs where"): gloo backend; DeepSpeed needs `DS_ACCELERATOR=cpu` set
before it is imported, and its shared-memory comm op (a JIT compile at start-up) is switched off.
"""
from __future__ import annotations

import gc
import os
from datetime import timedelta
from typing import Any

import torch

from common.config.deepspeed_json import read_deepspeed_json
from common.config.sections import TrainConfig
from common.run_context import RunContext
from common.train.elastic import init_restarted_group


def load_deepspeed_config(path: str, cfg: TrainConfig) -> dict[str, Any]:
    """Read a DeepSpeed JSON and fill what the engine owns (micro batch, accumulation, clipping)."""
    ds = read_deepspeed_json(path)
    ds["train_micro_batch_size_per_gpu"] = cfg.batch_size
    ds["gradient_accumulation_steps"] = cfg.grad_accum * cfg.contrastive_accum  # backward passes per step
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
    # train.dist_timeout_s: how long a collective waits for a rank that stopped answering
    backend = "gloo" if on_cpu else "nccl"  # on GPUs accelerate's own choice; on a CPU we ask for gloo
    group = {"backend": backend} if on_cpu else {}
    handlers = [InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist_timeout_s), **group)] if distributed else []
    if distributed:
        init_restarted_group(backend, cfg.dist_timeout_s)  # a torchrun restart: a store prefix of its own
    kwargs: dict[str, Any] = {}
    if cfg.deepspeed:
        _prepare_deepspeed_env()
        kwargs["deepspeed_plugin"] = DeepSpeedPlugin(hf_ds_config=load_deepspeed_config(cfg.deepspeed, cfg))
    elif on_cpu:
        kwargs["cpu"] = True
    accelerator = Accelerator(mixed_precision="no" if cfg.precision == "fp32" else cfg.precision,
                              gradient_accumulation_steps=cfg.grad_accum * cfg.contrastive_accum,  # backward passes
                              kwargs_handlers=handlers, **kwargs)
    if cfg.precision == "fp16" and on_cpu and not cfg.deepspeed:
        _enable_fp16_on_cpu(accelerator)
    return accelerator


def _enable_fp16_on_cpu(accelerator: Any) -> None:
    """accelerate runs fp16 on accelerators only (on a CPU it silently trains in fp32), while torch's
    autocast and GradScaler run fp16 on a CPU too: switch accelerate's own fp16 path on (its attributes,
    before `prepare`), so a CPU run takes the GPU's path: fp16 autocast, loss scaling, unscale before
    clipping, the scaler's skip-and-back-off on overflow and its state in checkpoints."""
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu")


def run_context(accelerator: Any, cfg: TrainConfig) -> RunContext:
    """The `RunContext` of this process under `accelerator`."""
    return RunContext(rank=accelerator.process_index, world_size=accelerator.num_processes,
                      device=accelerator.device, micro_batch=cfg.batch_size, grad_accum=cfg.grad_accum,
                      precision=cfg.precision, deepspeed=accelerator.distributed_type.name == "DEEPSPEED",
                      contrastive_accum=cfg.contrastive_accum, compile=cfg.compile,
                      compile_backend=cfg.compile_backend)


def shutdown(accelerator: Any, model: Any, wait_for_peers: bool = True) -> None:
    """Tear down cleanly: without the barrier, engine destroy and collection first, ZeRO-3 aborts at exit in
    a third to a half of CPU runs (`terminate called without an active exception`). After a collective
    failed (`wait_for_peers=False`: a rank hung or died) nothing waits for the other ranks."""
    if not wait_for_peers:
        return  # the process exits with its error; a barrier would wait out the timeout once more
    accelerator.wait_for_everyone()
    if hasattr(model, "destroy"):  # a DeepSpeed engine
        model.destroy()
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)  # a process may train again, in another precision


def abandon(accelerator: Any) -> None:
    """Undo `make_accelerator` after the run failed to build (a bad input found by its checks, a checkpoint
    that would not load): no barrier (the other ranks may have failed too, or not), the process group
    destroyed and accelerate's global state reset, so this process may build another run."""
    accelerator.free_memory()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    from accelerate.state import AcceleratorState
    AcceleratorState._reset_state(reset_partial_state=True)
