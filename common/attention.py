"""Attention backend for timm `Eva` towers: `sdpa` (default), `math` (reference), `xformers` (CUDA).

`sdpa` and `math` are timm's own two code paths (`EvaAttention.fused_attn`); `xformers` swaps the
module's class to a subclass whose forward is timm's with the attention kernel replaced by
`xformers.ops.memory_efficient_attention`. No backend adds, removes or renames a parameter.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from timm.layers import apply_rot_embed_cat
from timm.models.eva import EvaAttention
from torch import nn

BACKENDS = ("sdpa", "math", "xformers")


def _memory_efficient_attention():
    try:
        from xformers.ops import memory_efficient_attention
    except ImportError as err:
        raise ImportError("attention backend 'xformers' needs xformers: pip install 'evaclip[gpu]' "
                          "(CUDA only), or set model.attention=sdpa") from err
    return memory_efficient_attention


class XformersEvaAttention(EvaAttention):
    """timm's `EvaAttention.forward` with xformers' memory-efficient kernel (CUDA tensors only)."""

    def forward(self, x: torch.Tensor, rope: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
        if not x.is_cuda:
            raise RuntimeError("attention backend 'xformers' needs CUDA tensors; use attention: sdpa on CPU")
        if attn_mask is not None or is_causal:
            return super().forward(x, rope, attn_mask, is_causal)
        B, N, C = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        if self.qkv is not None:
            bias = None if self.q_bias is None else torch.cat((self.q_bias, self.k_bias, self.v_bias))
            qkv = F.linear(x, self.qkv.weight, bias if not self.qkv_bias_separate else None)
            if bias is not None and self.qkv_bias_separate:
                qkv = qkv + bias
            q, k, v = qkv.reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = (p(x).reshape(B, N, self.num_heads, -1).transpose(1, 2)
                       for p in (self.q_proj, self.k_proj, self.v_proj))
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            npt, half = self.num_prefix_tokens, getattr(self, "rotate_half", False)
            q = torch.cat([q[:, :, :npt], apply_rot_embed_cat(q[:, :, npt:], rope, half=half)], 2).type_as(v)
            k = torch.cat([k[:, :, :npt], apply_rot_embed_cat(k[:, :, npt:], rope, half=half)], 2).type_as(v)
        # xformers takes [B, N, heads, head_dim]
        out = _memory_efficient_attention()(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                            p=self.attn_drop.p if self.training else 0.0, scale=self.scale)
        x = self.norm(out.reshape(B, N, C))
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


def set_attention_backend(model: nn.Module, backend: str) -> int:
    """Switch every timm `EvaAttention` in `model` to `backend`; returns how many were switched."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend '{backend}' — use one of {', '.join(BACKENDS)} "
                         "(config key: model.attention)")
    if backend == "xformers":
        _memory_efficient_attention()  # fail early with the install hint
    switched = 0
    for module in model.modules():
        if isinstance(module, EvaAttention):
            module.__class__ = XformersEvaAttention if backend == "xformers" else EvaAttention
            module.fused_attn = backend != "math"
            switched += 1
    return switched
