"""Zero-shot classification and image↔text retrieval on a held-out split, distributed across ranks.

Every rank embeds its slice of the eval stream; counts are summed and features gathered, so the
numbers equal a single-process evaluation. Retrieval treats as positives all texts whose caption
string equals the image's own (class-derived captions repeat across images of a class).
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from common.dist import gather_rows, sum_across_ranks
from common.templates import build_zeroshot_classifier

RECALL_AT = (1, 5, 10)


def caption_id(caption: str) -> int:
    """A stable integer id of a caption string (equal strings ↔ equal ids, up to crc32 collisions)."""
    return zlib.crc32(caption.encode("utf-8"))


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of rows whose label is among the top-k logits, for each k: returns [len(ks)] float64."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hit = top == labels[:, None]
    return torch.tensor([hit[:, :min(k, k_max)].any(dim=1).sum().item() for k in ks], dtype=torch.float64)


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
    for name, (q, k) in {"i2t": (img, txt), "t2i": (txt, img)}.items():
        for r, value in zip(RECALL_AT, retrieval_recall(F.normalize(q, dim=-1), F.normalize(k, dim=-1), cid, cid)):
            metrics[f"{name}_R@{r}"] = value
    return metrics
