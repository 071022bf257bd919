"""Zero-shot classification and image↔text retrieval on a held-out split, distributed across ranks.

Every rank embeds its slice of the eval stream; counts are summed and features gathered, so the
numbers equal a single-process evaluation. Retrieval runs over UNIQUE captions: class-derived captions
repeat across the images of a class, so i2t ranks the distinct texts (positive: the image's own
caption) and t2i asks, for each distinct text, whether an image carrying it is in the top-k. With
real per-image captions nothing repeats and this is ordinary image↔text retrieval. Captions are told
apart by their exact strings (gathered from every rank), never by a hash that two captions could share.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

from common.data.templates import build_zeroshot_classifier
from common.evaluation.dist import gather_objects, gather_rows
from common.evaluation.topk import TopKCounter

RECALL_AT = (1, 5, 10)


def global_caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """Ids of the captions of every rank, in rank order (the order `gather_rows` gives their rows):
    [Σ_r n_r] int64, on every rank. A caption's id is the index of the first row holding the same string,
    so equal strings ↔ equal ids exactly, and `ids.unique()` are the rows of the distinct captions."""
    first_row: dict[str, int] = {}
    return torch.tensor([first_row.setdefault(c, row) for row, c in enumerate(gather_objects(list(captions)))],
                        dtype=torch.long)


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
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Zero-shot top-1/top-5 and retrieval R@1/5/10 over `batches` ({"image", "label", "caption"}), over
    every rank (a collective: call it on all ranks; `device` is where features and counts live).

    `encode_image(images [B,3,S,S]) -> [B,D]`, `encode_text(list of str) -> [B,D]`, both L2-normalised."""
    classifier = build_zeroshot_classifier(encode_text, classnames, templates).to(device)  # [D, C]
    counter = TopKCounter((1, 5))
    image_feats, text_feats, captions = [], [], []
    for batch in batches:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        feats = encode_image(images).float()
        counter.update(feats @ classifier.float(), labels)
        image_feats.append(feats)
        text_feats.append(encode_text(list(batch["caption"])).float())
        captions += list(batch["caption"])
    metrics = counter.result("zeroshot", device)
    dim = classifier.shape[0]
    img = gather_rows(torch.cat(image_feats) if image_feats else torch.zeros(0, dim, device=device))
    txt = gather_rows(torch.cat(text_feats) if text_feats else torch.zeros(0, dim, device=device))
    cid = global_caption_ids(captions).to(device)
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    first = cid.unique()  # the row of each distinct caption's first occurrence, which is also its id
    pairs = {"i2t": (img, txt[first], cid, first), "t2i": (txt[first], img, first, cid)}
    for name, (queries, keys, query_ids, key_ids) in pairs.items():
        for r, value in zip(RECALL_AT, retrieval_recall(queries, keys, query_ids, key_ids)):
            metrics[f"{name}_R@{r}"] = value
    return metrics
