"""Stage-2 evaluation on a held-out split of image–caption pairs, labelled or not, distributed across ranks.

Every rank embeds its slice of the eval stream; features, captions, labels and each sample's position in
the split (`index`) are gathered, so every rank holds the whole split in its fixed order and the numbers
equal a single-process evaluation for any world size:
- the run's contrastive loss (softmax or sigmoid) over consecutive chunks of the split (`PairLoss`);
- image→text and text→image R@1/5/10 (`retrieval_metrics`);
- zero-shot top-1/top-5 over the rows that carry a class label, when class names are known.
Retrieval runs over UNIQUE captions: class-derived captions repeat across the images of a class, so i2t
ranks the distinct texts (positive: the image's own caption) and t2i asks, for each distinct text,
whether an image carrying it is in the top-k. With real per-image captions nothing repeats and this is
ordinary image↔text retrieval. Captions are told apart by their exact strings, never by a hash that two
captions could share. An image with several captions is evaluated with its first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F

from common.data.templates import Template, build_zeroshot_classifier
from common.evaluation.dist import gather_objects, gather_rows
from common.evaluation.topk import topk_accuracy

RECALL_AT = (1, 5, 10)
ZEROSHOT_AT = (1, 5)


@dataclass
class PairFeatures:
    """The held-out split as every rank sees it after the gather, in the split's order: L2-normalised
    image and text features `[N, D] float32`, captions (N strings), labels `[N] int64` (−1: none)."""
    image: torch.Tensor
    text: torch.Tensor
    captions: list[str]
    labels: torch.Tensor


def caption_ids(captions: Sequence[str]) -> torch.Tensor:
    """`[N] int64`: a caption's id is the index of the first row holding the same string, so equal strings ↔
    equal ids exactly, and `ids.unique()` are the rows of the distinct captions."""
    first_row: dict[str, int] = {}
    return torch.tensor([first_row.setdefault(c, row) for row, c in enumerate(captions)], dtype=torch.long)


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


def retrieval_metrics(pairs: PairFeatures) -> dict[str, float]:
    """i2t and t2i R@1/5/10 over the distinct captions (see the module docstring)."""
    cid = caption_ids(pairs.captions).to(pairs.image.device)
    first = cid.unique()  # the row of each distinct caption's first occurrence, which is also its id
    text = pairs.text[first]
    directions = {"i2t": (pairs.image, text, cid, first), "t2i": (text, pairs.image, first, cid)}
    metrics = {}
    for name, (queries, keys, query_ids, key_ids) in directions.items():
        for r, value in zip(RECALL_AT, retrieval_recall(queries, keys, query_ids, key_ids)):
            metrics[f"{name}_R@{r}"] = value
    return metrics


@dataclass
class PairLoss:
    """The run's own contrastive loss on held-out pairs: `loss` (a single-process `ContrastiveLoss`) with
    the model's exponentiated `logit_scale` and `logit_bias` (sigmoid), over consecutive chunks of `chunk`
    pairs in the split's order (the pairs one training loss call sees); the mean over the full chunks. A
    last partial chunk is left out (its loss would not be comparable), unless it is the only one."""
    loss: Callable[..., torch.Tensor]
    logit_scale: torch.Tensor
    logit_bias: Optional[torch.Tensor]
    chunk: int

    def __call__(self, pairs: PairFeatures) -> float:
        n = pairs.image.shape[0]
        size = min(self.chunk, n)
        values = [float(self.loss(pairs.image[s:s + size], pairs.text[s:s + size], self.logit_scale,
                                  self.logit_bias)) for s in range(0, n - size + 1, size)]
        return sum(values) / len(values)


@torch.no_grad()
def embed_pairs(encode_image: Callable[[torch.Tensor], torch.Tensor],
                encode_text: Callable[[list[str]], torch.Tensor], batches: Iterable[dict[str, Any]],
                device: torch.device | str = "cpu") -> PairFeatures:
    """Embed this rank's batches ({"image", "caption", optional "label" (−1: none), optional "index"}) and
    gather every rank's rows, ordered by `index` (rank order where batches carry none). A collective."""
    images, texts, captions, labels, indices = [], [], [], [], []
    for batch in batches:
        images.append(encode_image(batch["image"].to(device)).float())
        texts.append(encode_text(list(batch["caption"])).float())
        captions += list(batch["caption"])
        count = len(batch["caption"])
        labels.append(torch.as_tensor(batch.get("label", [-1] * count), dtype=torch.long))
        indices.append(torch.as_tensor(batch.get("index", [-1] * count), dtype=torch.long))
    dims = gather_objects([images[0].shape[1]] if images else [])  # a rank may hold no rows
    if not dims:
        raise ValueError("the eval split is empty — check data.eval_shards")
    dim = dims[0]
    image = gather_rows(torch.cat(images) if images else torch.zeros(0, dim, device=device))
    text = gather_rows(torch.cat(texts) if texts else torch.zeros(0, dim, device=device))
    label = gather_rows(torch.cat(labels).to(device) if labels else torch.zeros(0, dtype=torch.long, device=device))
    index = gather_rows(torch.cat(indices).to(device) if indices else torch.zeros(0, dtype=torch.long, device=device))
    captions = gather_objects(captions)
    order = index.argsort(stable=True) if bool((index >= 0).all()) else torch.arange(len(captions), device=device)
    return PairFeatures(F.normalize(image[order], dim=-1), F.normalize(text[order], dim=-1),
                        [captions[i] for i in order.tolist()], label[order])


def zeroshot_metrics(pairs: PairFeatures, classifier: torch.Tensor) -> dict[str, float]:
    """Zero-shot top-1/top-5 of the labelled rows against `classifier` [D, C]; {} when no row is labelled."""
    labelled = pairs.labels >= 0
    if not bool(labelled.any()):
        return {}
    logits = pairs.image[labelled] @ classifier.to(pairs.image.device).float()
    hits = topk_accuracy(logits, pairs.labels[labelled], ZEROSHOT_AT) / int(labelled.sum())
    return {f"zeroshot_top{k}": float(h) for k, h in zip(ZEROSHOT_AT, hits)}


@torch.no_grad()
def evaluate_clip(encode_image: Callable[[torch.Tensor], torch.Tensor],
                  encode_text: Callable[[list[str]], torch.Tensor], batches: Iterable[dict[str, Any]],
                  classnames: Sequence[str], templates: Sequence[Template],
                  device: torch.device | str = "cpu", loss: Optional[PairLoss] = None) -> dict[str, float]:
    """Held-out metrics over every rank (a collective: call it on all ranks; `device` is where features
    live): `n`, retrieval R@1/5/10, the contrastive `loss` when given, zero-shot top-1/top-5 when
    `classnames` are given and rows carry labels. `encode_image(images [B,3,S,S]) -> [B,D]`,
    `encode_text(list of str) -> [B,D]`."""
    pairs = embed_pairs(encode_image, encode_text, batches, device)
    metrics: dict[str, float] = {"n": len(pairs.captions)}
    if loss is not None:
        metrics["loss"] = loss(pairs)
    metrics.update(retrieval_metrics(pairs))
    if classnames:
        metrics.update(zeroshot_metrics(pairs, build_zeroshot_classifier(encode_text, classnames, templates)))
    return metrics
