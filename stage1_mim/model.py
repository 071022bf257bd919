"""Stage-1 student: a timm `Eva` trunk + a learned mask token + a per-token regression head.

BEiT/EVA style: every patch token goes through the encoder; masked positions carry the mask token
instead of their patch embedding (before position embeddings, so a masked token = mask_token + pos).
`forward` mirrors timm's `Eva.forward_features` step for step (same `_pos_embed`, RoPE, `norm_pre`,
block loop with timm's grad checkpointing, `norm`), so the trunk is trained exactly as stage 2 runs it
and its state dict keeps timm's key names.
"""
from __future__ import annotations

from typing import Optional

import torch
from timm.models._manipulate import checkpoint
from torch import nn


class MaskedEvaStudent(nn.Module):
    """`forward(images [B,3,H,W], mask [B,N] bool | None) -> [B, N, target_dim]` patch-token predictions.

    Submodules: `trunk` (timm Eva, untouched names), `mask_token` [1,1,width], `head` (LayerNorm, Linear).
    The trunk's pooled path (`fc_norm`, `head`) is never run here; its parameters are frozen so that DDP
    sees no unused parameters (they stay at their init and still travel in the saved trunk).
    """

    def __init__(self, trunk: nn.Module, target_dim: int):
        super().__init__()
        if getattr(trunk, "patch_drop", None) is not None:
            raise ValueError("patch dropout drops tokens the MIM loss needs — create the stage-1 trunk with "
                             "patch_drop_rate=0")
        width = trunk.num_features
        self.trunk = trunk
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, target_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.head[1].weight, std=0.02)
        nn.init.zeros_(self.head[1].bias)
        for name in ("fc_norm", "head", "head_drop", "attn_pool"):
            module = getattr(trunk, name, None)
            if isinstance(module, nn.Module):
                module.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)

    def embed(self, images: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Patch embedding with masked positions replaced by the mask token, then timm's `_pos_embed`.

        Returns tokens `[B, prefix + N, width]` (prefix = cls/register tokens) and the RoPE embedding."""
        x = self.trunk.patch_embed(images)  # [B, N, C], or [B, h, w, C] when dynamic_img_size
        if mask is not None:
            num_patches = x.shape[1] * x.shape[2] if x.ndim == 4 else x.shape[1]
            if mask.shape != (x.shape[0], num_patches):
                raise ValueError(f"mask has shape {tuple(mask.shape)}, expected [B, N] = "
                                 f"[{x.shape[0]}, {num_patches}] for images of shape {tuple(images.shape)}")
            mask = mask.to(device=x.device, dtype=torch.bool).view(*x.shape[:-1], 1)
            x = torch.where(mask, self.mask_token.to(x.dtype).view(*[1] * (x.ndim - 1), -1), x)
        return self.trunk._pos_embed(x)

    def encode(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """timm's `forward_features` with the mask token inserted: returns `[B, prefix + N, width]`."""
        trunk = self.trunk
        x, rope = self.embed(images, mask)
        x = trunk.norm_pre(x)
        mixed = getattr(trunk, "rope_mixed", False) and rope is not None  # depth-dependent RoPE
        for i, block in enumerate(trunk.blocks):
            block_rope = rope[i] if mixed else rope
            if trunk.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(block, x, rope=block_rope)
            else:
                x = block(x, rope=block_rope)
        return trunk.norm(x)

    def forward(self, images: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        tokens = self.encode(images, mask)[:, self.trunk.num_prefix_tokens:]
        return self.head(tokens)
