"""Loading a ViT trunk's weights at the boundary, in ONE function (timm's `checkpoint_filter_fn` style):
strict key matching with an explicit allow-list, absolute position embeddings resampled when the
image size differs, and one-line errors that name both shapes."""
from __future__ import annotations

import logging
from typing import Collection

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from common.config.schema import ConfigError

log = logging.getLogger("evaclip")


class TrunkMismatchError(ConfigError):
    """A checkpoint that does not fit the trunk (another architecture or width): a one-line error."""


def _resample_pos_embed(value: torch.Tensor, trunk: nn.Module) -> torch.Tensor:
    target = trunk.pos_embed
    prefix = trunk.num_prefix_tokens
    old_grid = int(round((value.shape[1] - prefix) ** 0.5))
    new_grid = list(trunk.patch_embed.grid_size)
    log.info("resampling pos_embed from a %dx%d grid to %dx%d", old_grid, old_grid, *new_grid)
    resized = resample_abs_pos_embed(value, new_grid, [old_grid, old_grid], num_prefix_tokens=prefix)
    if resized.shape != target.shape:
        raise TrunkMismatchError(f"pos_embed {tuple(value.shape)} cannot be resampled to {tuple(target.shape)}")
    return resized


def fit_trunk_state(state: dict[str, torch.Tensor], trunk: nn.Module, source: str,
                    may_differ: Collection[str] = ()) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Match `state` to `trunk`'s keys and shapes. Keys with a prefix in `may_differ` may be absent,
    extra or of another shape (they keep the trunk's fresh values). Returns the state to load and a
    report {"loaded", "resampled", "skipped", "new"} naming every key once (resampled: the position
    embedding of another image size); raises `TrunkMismatchError` on anything else."""
    own = trunk.state_dict()
    allowed = lambda key: any(key.startswith(p) for p in may_differ)  # noqa: E731
    fitted, report = {}, {"loaded": [], "resampled": [], "skipped": [], "new": []}
    for key, value in state.items():
        if key not in own:
            if not allowed(key):
                raise TrunkMismatchError(f"'{source}' has key '{key}' that the vision trunk lacks — it was "
                                         "saved from another architecture; set model.vision_model to match it")
            report["skipped"].append(key)
            continue
        resampled = key == "pos_embed" and value.shape != own[key].shape and value.shape[-1] == own[key].shape[-1]
        if resampled:
            value = _resample_pos_embed(value, trunk)
        if value.shape != own[key].shape:
            if allowed(key):
                report["skipped"].append(key)
                continue
            raise TrunkMismatchError(f"'{source}' tensor '{key}' has shape {tuple(value.shape)} but the vision "
                                     f"trunk expects {tuple(own[key].shape)} — another model size; set "
                                     "model.vision_model to the one it was trained with")
        fitted[key] = value.to(own[key].dtype)
        report["resampled" if resampled else "loaded"].append(key)
    missing = [k for k in own if k not in fitted]
    not_allowed = [k for k in missing if not allowed(k)]
    if not_allowed:
        raise TrunkMismatchError(f"'{source}' lacks {len(not_allowed)} trunk tensors (first: '{not_allowed[0]}') "
                                 "— is it a complete timm Eva trunk of the same model?")
    report["new"] = missing
    return fitted, report


def load_trunk_state(trunk: nn.Module, state: dict[str, torch.Tensor], source: str,
                     may_differ: Collection[str] = ()) -> dict[str, list[str]]:
    """`fit_trunk_state` then load (strict over the checked keys); logs what was loaded/skipped/new."""
    fitted, report = fit_trunk_state(state, trunk, source, may_differ)
    result = trunk.load_state_dict(fitted, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == set(report["new"]), result
    log_load_report(source, report)
    return report


def log_load_report(source: str, report: dict[str, list[str]]) -> None:
    """One log line naming every key of a load report once: loaded, resampled, skipped, new."""
    log.info("from %s: loaded %d %s; resampled %s; skipped %s; newly initialised %s", source,
             len(report["loaded"]), report["loaded"], report["resampled"] or "none",
             report["skipped"] or "none", report["new"] or "none")
