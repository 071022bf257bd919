"""Fitting a state dict to a model at the load boundary, strictly, in ONE function (timm's
`checkpoint_filter_fn` idea): every tensor loaded, or resampled where a rule says how, or — only for keys
on an explicit allow-list — skipped or left new. Anything else is a one-line `WeightsMismatchError` that
names the key, both shapes and the fix. Used by the trunk loader (`common.vision.trunk_io`), `--init`
(`stage2_contrastive.starting_point`) and the text-tower initialiser (`stage2_contrastive.text_init`)."""
from __future__ import annotations

import logging
from typing import Callable, Collection, Mapping

import torch
from torch import nn

from common.errors import WeightsMismatchError

log = logging.getLogger("evaclip")

Report = dict[str, list[str]]  # {"loaded", "resampled", "skipped" (the file's, not loaded), "new" (the model's)}
Resample = Callable[[torch.Tensor], torch.Tensor]  # a saved tensor of another size → the model's size


def empty_report() -> Report:
    return {"loaded": [], "resampled": [], "skipped": [], "new": []}


def fit_state_dict(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str, what: str,
                   fix: str, may_differ: Collection[str] = (), resample: Mapping[str, Resample] | None = None
                   ) -> tuple[dict[str, torch.Tensor], Report]:
    """Match `state` to `own` (the model's state dict): keys and shapes. A key in `resample` whose shape
    differs goes through its rule; keys starting with a prefix in `may_differ` may be absent, extra or of
    another shape (they keep the model's fresh values). Returns the tensors to load (in the model's dtypes)
    and a report naming what was loaded, resampled, skipped (the file's) and left new (the model's).
    `source` and `what` name the file and the module in errors, `fix` says what to change."""
    allowed = lambda key: key.startswith(tuple(may_differ))  # noqa: E731
    fitted, report = {}, empty_report()
    for key, value in state.items():
        if key not in own:
            if not allowed(key):
                raise WeightsMismatchError(f"{source} has '{key}', which the {what} lacks — {fix}")
            report["skipped"].append(key)
            continue
        resampled = resample is not None and key in resample and value.shape != own[key].shape
        if resampled:
            value = resample[key](value)
        if value.shape != own[key].shape:
            if allowed(key):
                report["skipped"].append(key)
                continue
            raise WeightsMismatchError(f"{source}: '{key}' {tuple(value.shape)} does not fit the {what} "
                                       f"({tuple(own[key].shape)}) — {fix}")
        fitted[key] = value.to(own[key].dtype)
        report["resampled" if resampled else "loaded"].append(key)
    missing = [k for k in own if k not in fitted]
    not_allowed = [k for k in missing if not allowed(k)]
    if not_allowed:
        raise WeightsMismatchError(f"{source} lacks {len(not_allowed)} tensors of the {what} (first: "
                                   f"'{not_allowed[0]}') — {fix}")
    report["new"] = missing
    return fitted, report


def load_fitted(module: nn.Module, fitted: dict[str, torch.Tensor], report: Report, source: str) -> Report:
    """Load what `fit_state_dict` returned (strict over the checked keys) and log the report in one line."""
    result = module.load_state_dict(fitted, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == set(report["new"]), result
    log.info("from %s: loaded %d %s; resampled %s; skipped %s; newly initialised %s", source,
             len(report["loaded"]), report["loaded"], report["resampled"] or "none",
             report["skipped"] or "none", report["new"] or "none")
    return report
