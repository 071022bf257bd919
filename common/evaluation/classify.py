"""Zero-shot classification of a labelled eval stream against a classifier `[D, C]`, summed over ranks:
stage 2's named zero-shot sets and stage 1's probe (against its teacher's text embeddings) share it."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F

from common.evaluation.topk import TopKCounter


@torch.no_grad()
def zeroshot_accuracy(embed_image: Callable[[torch.Tensor], torch.Tensor], classifier: torch.Tensor,
                      batches: Iterable[dict[str, Any]], device: torch.device | str = "cpu",
                      prefix: str = "zeroshot") -> dict[str, float]:
    """{f"{prefix}_top1", f"{prefix}_top5", "n"} over this rank's batches ({"image", "label"}) and every
    other rank's (a collective). `embed_image(images [B,3,S,S] on device) -> [B, D]` (normalised here)."""
    counter = TopKCounter((1, 5))
    weights = classifier.to(device).float()
    for batch in batches:
        features = F.normalize(embed_image(batch["image"].to(device)).float(), dim=-1)
        counter.update(features @ weights, batch["label"].to(device))
    return counter.result(prefix, device)
