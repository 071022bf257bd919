"""Loading a ViT trunk's weights at the boundary: strict (`common.weights.fit`), with the absolute position
embedding resampled when the image size differs; one-line errors that name both shapes."""
from __future__ import annotations

import logging
from typing import Collection

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from common.weights.fit import Report, Resample, fit_state_dict, load_fitted

log = logging.getLogger("evaclip")
TRUNK_FIX = "is it a timm Eva trunk of the same model? set model.vision_model to the one it was trained with"


def pos_embed_resampler(trunk: nn.Module) -> Resample:
    """The rule that resamples a saved `pos_embed` of another grid (same width) to `trunk`'s grid."""
    def resample(value: torch.Tensor) -> torch.Tensor:
        if value.shape[-1] != trunk.pos_embed.shape[-1]:
            return value  # another width: not a resampling case, the fit reports both shapes
        prefix = trunk.num_prefix_tokens
        old_grid = int(round((value.shape[1] - prefix) ** 0.5))
        new_grid = list(trunk.patch_embed.grid_size)
        log.info("resampling pos_embed from a %dx%d grid to %dx%d", old_grid, old_grid, *new_grid)
        return resample_abs_pos_embed(value, new_grid, [old_grid, old_grid], num_prefix_tokens=prefix)
    return resample


def fit_trunk_state(state: dict[str, torch.Tensor], trunk: nn.Module, source: str,
                    may_differ: Collection[str] = ()) -> tuple[dict[str, torch.Tensor], Report]:
    """`fit_state_dict` for a timm Eva trunk (`source`: how errors name the file, e.g. "'PATH'")."""
    return fit_state_dict(state, trunk.state_dict(), source, "vision trunk", TRUNK_FIX, may_differ,
                          {"pos_embed": pos_embed_resampler(trunk)})


def load_trunk_state(trunk: nn.Module, state: dict[str, torch.Tensor], source: str,
                     may_differ: Collection[str] = ()) -> Report:
    """`fit_trunk_state`, then load it (strict over the checked keys) and log what was loaded/skipped/new."""
    fitted, report = fit_trunk_state(state, trunk, f"'{source}'", may_differ)
    return load_fitted(trunk, fitted, report, source)
