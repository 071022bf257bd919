"""Attention backend for timm `Eva` towers (docs/ARCHITECTURE.md, "Attention backends"; config keys
`model.attention`, `student.attention`).

- `auto`: `xformers` where its CUDA kernels load (`xformers_unavailable_reason()` is None), else `sdpa`;
  the choice and its reason are logged.
- `sdpa` (default): `F.scaled_dot_product_attention` — timm's own fused path (`fused_attn=True`).
- `math` (reference): explicit `softmax(q k^T * scale) v` — timm's unfused path (`fused_attn=False`).
- `xformers` (CUDA only, `pip install 'evaclip[gpu]'`): the module's class is swapped to
  `XformersEvaAttention`, whose forward is timm's `EvaAttention.forward` with the kernel replaced by
  `xformers.ops.memory_efficient_attention` (imported lazily).

No backend adds, removes or renames a parameter or buffer: the state dict is identical under all three.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Literal, Optional, get_args

import timm.layers
import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import nn

from common.errors import ConfigError

AttentionBackend = Literal["auto", "sdpa", "math", "xformers"]  # the config type of every attention key
BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
log = logging.getLogger("evaclip")
# timm's `Eva(attn_type='rope')` uses AttentionRope (same fused_attn switch; not in older timm)
_ROPE_ATTENTION = tuple(c for c in [getattr(timm.layers, "AttentionRope", None)] if c is not None)
_ATTENTION_TYPES = (EvaAttention, *_ROPE_ATTENTION)


def xformers_kernel() -> Callable[..., torch.Tensor]:
    """`xformers.ops.memory_efficient_attention`, or an ImportError that says how to get it (the tests stub
    it to run `XformersEvaAttention` on CPU with a reference kernel)."""
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError as err:
        raise ImportError("attention backend 'xformers' needs the xformers package: "
                          "pip install 'evaclip[gpu]' (CUDA only), or set model.attention=sdpa") from err
    return memory_efficient_attention


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v by xformers; q, k, v: [B, N, heads, head_dim] CUDA → [B, N, heads, head_dim]."""
    if not q.is_cuda:
        raise RuntimeError("attention backend 'xformers' needs CUDA tensors; use attention: sdpa on CPU")
    try:
        return xformers_kernel()(q, k, v, p=p, scale=scale)
    except NotImplementedError as err:  # e.g. an xformers wheel built for another torch/CUDA
        raise RuntimeError("xformers has no kernel for these inputs (its build must match this torch and "
                           "CUDA: see `python -m xformers.info`); reinstall xformers for this torch or set "
                           "model.attention=sdpa") from err


@functools.lru_cache(maxsize=None)
def xformers_unavailable_reason() -> Optional[str]:
    """None when the xformers backend runs here (CUDA, xformers installed, kernels load), else why not.
    Probed once per process (a tiny fp16 attention call on the GPU)."""
    if not torch.cuda.is_available():
        return "xformers memory_efficient_attention needs CUDA"
    try:
        q = torch.zeros(1, 8, 1, 64, device="cuda", dtype=torch.float16)
        xformers_attention(q, q, q, p=0.0, scale=0.125)
    except (ImportError, RuntimeError) as err:
        return str(err).split(";")[0]
    return None


def check_attention_backend(backend: str) -> None:
    """Config-time check: `ConfigError` (one line, the fix named) when `backend` cannot run on this machine."""
    if backend == "xformers":
        reason = xformers_unavailable_reason()
        if reason is not None:
            raise ConfigError(f"attention backend 'xformers' cannot run here ({reason}) — set the attention "
                              "key to sdpa, or install xformers built for this torch on a CUDA machine")


def resolve_attention_backend(backend: str) -> str:
    """The backend `backend` runs as: `auto` → `xformers` where its kernels load, else `sdpa` (logged)."""
    if backend != "auto":
        return backend
    reason = xformers_unavailable_reason()
    chosen = "sdpa" if reason else "xformers"
    log.info("attention: auto → %s (%s)", chosen, f"xformers: {reason}" if reason else "xformers kernels load")
    return chosen


class XformersEvaAttention(EvaAttention):
    """timm's `EvaAttention` with xformers' memory-efficient kernel; same parameters, same math.

    Falls back to timm's SDPA path when an attention mask or causal masking is requested.
    """

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        """x: [B, N, C], rope: [N - prefix, 2 * head_dim] → [B, N, C]."""
        if attn_mask is not None or is_causal:
            return super().forward(x, rope, attn_mask, is_causal)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        q, k, v = self._qkv(x)  # each [B, heads, N, head_dim]
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2).type_as(v)
        out = xformers_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),  # [B, N, H, D]
                                 p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        out = self.norm(out.reshape(B, N, -1))
        if gate is not None:
            out = out * gate
        return self.proj_drop(self.proj(out))

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """timm's projections (fused qkv with q/v bias and zero k bias, or separate), then q/k norm."""
        B, N, _ = x.shape
        if self.qkv is not None:
            if self.q_bias is None:
                qkv = self.qkv(x)
            else:
                bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
                qkv = self.qkv(x) + bias if self.qkv_bias_separate else F.linear(x, self.qkv.weight, bias)
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (proj(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
                       for proj in (self.q_proj, self.k_proj, self.v_proj))
        return self.q_norm(q), self.k_norm(k), v


def _switch(module: nn.Module, backend: str) -> None:
    if backend == "xformers" and type(module) is EvaAttention:
        module.__class__ = XformersEvaAttention
    elif backend != "xformers" and type(module) is XformersEvaAttention:
        module.__class__ = EvaAttention
    module.fused_attn = backend != "math"  # xformers falls back to SDPA for masked attention


def set_attention_backend(model: nn.Module, backend: str) -> int:
    """Switch every timm Eva attention module in `model` to `backend`; returns how many were switched."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}' — use one of {', '.join(BACKENDS)} "
                         "(config key: model.attention)")
    backend = resolve_attention_backend(backend)
    if backend == "xformers":
        xformers_kernel()  # fail early with the install hint
    modules = [m for m in model.modules() if isinstance(m, _ATTENTION_TYPES)]
    if backend == "xformers" and any(not isinstance(m, EvaAttention) for m in modules):
        raise ValueError("attention backend 'xformers' supports timm EvaAttention (eva02_* models), not "
                         "AttentionRope — set model.attention=sdpa for this model")
    for module in modules:
        _switch(module, backend)
    return len(modules)
