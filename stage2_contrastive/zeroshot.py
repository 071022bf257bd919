"""Zero-shot classification and image↔text retrieval on a held-out split, distributed across ranks.

Every rank embeds its slice of the eval stream; counts are summed and features gathered, so the
numbers equal a single-process evaluation. Retrieval runs over UNIQUE captions: class-derived captions
repeat across the images of a class, so i2t ranks the distinct texts (positive: the image's own
caption) and t2i asks, for each distinct text, whether an image carrying it is in the top-k. With
real per-image captions nothing repeats and this is ordinary image↔text retrieval.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from common.accuracy import topk_accuracy
from common.dist import gather_rows, sum_across_ranks
from common.templates import build_zeroshot_classifier

RECALL_AT = (1, 5, 10)


def caption_id(caption: str) -> int:
    """A stable integer id of a caption string (equal strings ↔ equal ids, up to crc32 collisions)."""
    return zlib.crc32(caption.encode("utf-8"))


def retrieval_recall(queries: torch.Tensor, keys: torch.Tensor, query_ids: torch.Tensor,
                     key_ids: torch.Tensor, ks: Sequence[int] = RECALL_AT, chunk: int = 1024) -> list[float]:
    """R@k: fraction of queries [N,D] with a positive key [M,D] (same id) in their top-k, chunked."""
    hits = torch.zeros(len(ks), dtype=torch.float64)
    k_max = min(max(ks), keys.shape[0])
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ keys.T
        top_ids = key_ids[sims.topk(k_max, dim=1).indices]
        positive = top_ids == query_ids[start:start + chunk, None]
        for i, k in enumerate(ks):
            hits[i] += positive[:, :k].any(dim=1).sum().item()
    return (hits / max(queries.shape[0], 1)).tolist()


@torch.no_grad()
def evaluate_clip(encode_image: Callable[[torch.Tensor], torch.Tensor],
                  encode_text: Callable[[list[str]], torch.Tensor], batches: Iterable[dict[str, Any]],
                  classnames: Sequence[str], templates: Sequence[Callable[[str], str]],
                  accelerator: Any) -> dict[str, float]:
    """Zero-shot top-1/top-5 and retrieval R@1/5/10 over `batches` ({"image", "label", "caption"}).

    `encode_image(images [B,3,S,S]) -> [B,D]`, `encode_text(list of str) -> [B,D]`, both L2-normalised."""
    device = accelerator.device
    classifier = build_zeroshot_classifier(encode_text, classnames, templates).to(device)  # [D, C]
    counts = torch.zeros(3, dtype=torch.float64)  # top-1 hits, top-5 hits, samples
    image_feats, text_feats, ids = [], [], []
    for batch in batches:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        feats = encode_image(images).float()
        counts[:2] += topk_accuracy(feats @ classifier.float(), labels, (1, 5)).cpu()
        counts[2] += labels.shape[0]
        image_feats.append(feats)
        text_feats.append(encode_text(list(batch["caption"])).float())
        ids.append(torch.tensor([caption_id(c) for c in batch["caption"]], device=device))
    counts = sum_across_ranks(counts.to(device), accelerator).cpu()
    if counts[2] == 0:
        raise ValueError("the eval split is empty — check data.eval_shards")
    metrics = {"zeroshot_top1": float(counts[0] / counts[2]), "zeroshot_top5": float(counts[1] / counts[2]),
               "n": int(counts[2])}
    dim = classifier.shape[0]
    img = gather_rows(torch.cat(image_feats) if image_feats else torch.zeros(0, dim, device=device), accelerator)
    txt = gather_rows(torch.cat(text_feats) if text_feats else torch.zeros(0, dim, device=device), accelerator)
    cid = gather_rows(torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long, device=device), accelerator)
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    unique_ids, first = first_occurrences(cid)
    pairs = {"i2t": (img, txt[first], cid, unique_ids), "t2i": (txt[first], img, unique_ids, cid)}
    for name, (queries, keys, query_ids, key_ids) in pairs.items():
        for r, value in zip(RECALL_AT, retrieval_recall(queries, keys, query_ids, key_ids)):
            metrics[f"{name}_R@{r}"] = value
    return metrics


def first_occurrences(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(unique ids [U], index of each one's first occurrence in `ids` [U])."""
    unique_ids, inverse = torch.unique(ids, return_inverse=True)
    positions = torch.arange(ids.shape[0], device=ids.device)
    first = torch.full_like(unique_ids, ids.shape[0]).scatter_reduce(0, inverse, positions, reduce="amin")
    return unique_ids, first
