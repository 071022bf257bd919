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
from accelerate.utils import gather_object

from common.accuracy import topk_accuracy
from common.dist import gather_rows, sum_across_ranks
from common.templates import build_zeroshot_classifier

RECALL_AT = (1, 5, 10)


def global_caption_ids(captions: Sequence[str], accelerator: Any) -> torch.Tensor:
    """Ids of the captions of every rank, in rank order (the order `gather_rows` gives their rows):
    [Σ_r n_r] int64, on every rank. A caption's id is the index of the first row holding the same string,
    so equal strings ↔ equal ids exactly, and `ids.unique()` are the rows of the distinct captions."""
    gathered = list(captions) if accelerator.num_processes == 1 else gather_object(list(captions))
    first_row: dict[str, int] = {}
    return torch.tensor([first_row.setdefault(c, row) for row, c in enumerate(gathered)], dtype=torch.long)


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
    image_feats, text_feats, captions = [], [], []
    for batch in batches:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        feats = encode_image(images).float()
        counts[:2] += topk_accuracy(feats @ classifier.float(), labels, (1, 5)).cpu()
        counts[2] += labels.shape[0]
        image_feats.append(feats)
        text_feats.append(encode_text(list(batch["caption"])).float())
        captions += list(batch["caption"])
    counts = sum_across_ranks(counts.to(device), accelerator).cpu()
    if counts[2] == 0:
        raise ValueError("the eval split is empty — check data.eval_shards")
    metrics = {"zeroshot_top1": float(counts[0] / counts[2]), "zeroshot_top5": float(counts[1] / counts[2]),
               "n": int(counts[2])}
    dim = classifier.shape[0]
    img = gather_rows(torch.cat(image_feats) if image_feats else torch.zeros(0, dim, device=device), accelerator)
    txt = gather_rows(torch.cat(text_feats) if text_feats else torch.zeros(0, dim, device=device), accelerator)
    cid = global_caption_ids(captions, accelerator).to(device)
    img, txt = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
    first = cid.unique()  # the row of each distinct caption's first occurrence, which is also its id
    pairs = {"i2t": (img, txt[first], cid, first), "t2i": (txt[first], img, first, cid)}
    for name, (queries, keys, query_ids, key_ids) in pairs.items():
        for r, value in zip(RECALL_AT, retrieval_recall(queries, keys, query_ids, key_ids)):
            metrics[f"{name}_R@{r}"] = value
    return metrics

