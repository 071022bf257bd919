"""Eval cases for `evaluate_clip` whose answers are known, and a distributed run of them.

The 'encoders' are lookups: an image is its own feature vector and every caption or prompt string maps to
a fixed text vector, so the metrics depend only on the case. Each rank evaluates its contiguous, unevenly
sized slice of the rows (so `gather_rows` has to pad), in batches; the caption-only case instead deals
rows round-robin and tags them with their `index`, as the eval stream does (the gather must restore the
split's order for the chunked loss). Every case is also scored with both contrastive losses.

`reference_metrics` computes what `evaluate_clip` must return, by brute force on the caption strings.

Run under torchrun, every rank evaluates its slice of every case and rank 0 writes the metrics:
`python -m tests.support.tasks.zeroshot_eval OUT_DIR` → OUT_DIR/metrics_world{W}.json ({case/loss: metrics}).
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

NATO = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
        "kilo", "lima"]
TEMPLATES: list[Callable[[str], str]] = [lambda c: f"a photo of a {c}.", lambda c: f"a {c}."]
# The rank (1 = most similar) of each image's true class among the 12 class texts, in the ranked case.
LABEL_RANKS = [1, 2, 1, 6, 11, 1, 3, 12, 1, 5, 10, 2, 1, 7, 4, 11, 1, 9, 5, 12, 2, 8, 1, 3]


@dataclass
class EvalCase:
    """Inputs of `evaluate_clip`: images [N, D] (their own features), labels [N], captions (N strings) and
    the text vector [D] of every caption and prompt string."""
    classnames: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    text_vectors: dict[str, torch.Tensor]
    templates: tuple[Callable[[str], str], ...] = tuple(TEMPLATES)
    round_robin: bool = False  # rank r holds rows r, r + W, …, each batch with its rows' `index`

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """[len(texts), D]"""
        return torch.stack([self.text_vectors[t] for t in texts])

    def rows(self, rank: int, world_size: int) -> range:
        """Rank `rank`'s contiguous slice; every boundary sits one row after an even split (uneven sizes)."""
        n = len(self.captions)
        bounds = [0, *[min(n, n * r // world_size + 1) for r in range(1, world_size)], n]
        return range(bounds[rank], bounds[rank + 1])

    def batches(self, rank: int = 0, world_size: int = 1, batch_size: int = 5) -> Iterator[dict[str, Any]]:
        rows = list(range(rank, len(self.captions), world_size)) if self.round_robin else \
            list(self.rows(rank, world_size))
        for start in range(0, len(rows), batch_size):
            part = torch.tensor(rows[start:start + batch_size])
            batch = {"image": self.images[part], "label": self.labels[part],
                     "caption": [self.captions[i] for i in part.tolist()]}
            yield {**batch, "index": part} if self.round_robin else batch


def class_texts(classnames: list[str], vectors: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every prompt of class c (all TEMPLATES) → vectors[c] [D]."""
    return {t(name): vectors[c] for c, name in enumerate(classnames) for t in TEMPLATES}


def ranked_case() -> EvalCase:
    """12 classes, 24 images (two per class), class texts one-hot [D = 13]; image i ranks its own class
    at LABEL_RANKS[i] among the 12 and the others in a fixed order, with weights 12, 11, …, 1 (the 13th
    dimension, 0.1·(i + 1), only breaks ties between images). Captions: the first template of the label,
    so each distinct caption is one class text and i2t ranks it exactly as the zero-shot classifier does."""
    num_classes, rows = len(NATO), len(LABEL_RANKS)
    labels = torch.arange(rows) % num_classes
    images = torch.zeros(rows, num_classes + 1)
    for i, (label, rank) in enumerate(zip(labels.tolist(), LABEL_RANKS)):
        others = [(label + j) % num_classes for j in range(1, num_classes)]
        order = others[:rank - 1] + [label] + others[rank - 1:]  # position p gets weight 12 - p
        images[i, order] = torch.arange(num_classes, 0, -1, dtype=torch.float32)
        images[i, -1] = 0.1 * (i + 1)
    texts = class_texts(NATO, torch.eye(num_classes + 1))
    captions = [TEMPLATES[0](NATO[c]) for c in labels.tolist()]
    return EvalCase(NATO, images, labels, captions, texts)


# Distinct strings with the same crc32: a hash-based caption id would merge them into one caption.
CRC32_TWINS = ("plumless", "buckeroo")


def random_case(seed: int = 0, rows: int = 40, dim: int = 16, noise: float = 2.0) -> EvalCase:
    """12 classes, seeded random text vectors. Most images carry their class caption (repeated within a
    class); every 4th row a free-form caption of its own; the last six rows CRC32_TWINS and four more;
    rows 1 and 2 repeat two of those, so repeats and a crc32 twin span the ranks' slices. Each image is
    its caption's text vector plus `noise` × a random vector of the same size."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(len(NATO), (rows,), generator=gen)
    texts = class_texts(NATO, torch.randn(len(NATO), dim, generator=gen))
    captions = [f"scene {i}" if i % 4 == 0 else TEMPLATES[0](NATO[c]) for i, c in enumerate(labels.tolist())]
    shoes = "a pair of shoes on a shelf."
    captions[-6:] = [*CRC32_TWINS, shoes, "rain", shoes, "snow"]
    captions[1:3] = ["rain", CRC32_TWINS[1]]
    texts.update({c: torch.randn(dim, generator=gen) for c in captions if c not in texts})
    images = torch.stack([texts[c] for c in captions]) + noise * torch.randn(rows, dim, generator=gen)
    return EvalCase(NATO, images, labels, captions, texts)


def captions_case(seed: int = 1, rows: int = 30, dim: int = 8, noise: float = 1.5) -> EvalCase:
    """Image–caption pairs without labels or class names (labels −1): free-form captions, three of them
    repeated, each image its caption's random text vector plus noise; dealt round-robin to the ranks."""
    gen = torch.Generator().manual_seed(seed)
    captions = [f"caption {i % 27}" for i in range(rows)]  # rows 27-29 repeat captions 0-2
    texts = {c: torch.randn(dim, generator=gen) for c in captions}
    images = torch.stack([texts[c] for c in captions]) + noise * torch.randn(rows, dim, generator=gen)
    return EvalCase([], images, torch.full((rows,), -1), captions, texts, round_robin=True)


CASES: dict[str, Callable[[], EvalCase]] = {"ranked": ranked_case, "random": random_case, "captions": captions_case}
LOSSES = {"softmax": (10.0, None), "sigmoid": (10.0, -2.0)}  # kind: (logit scale t, logit bias b)
LOSS_CHUNK = 12  # pairs per loss call: 24 rows → 2 chunks, 40 → 3 (+ 4 left out), 30 → 2 (+ 6 left out)


def evaluate_case(case: EvalCase, rank: int = 0, world_size: int = 1, loss: str = "softmax") -> dict[str, float]:
    """`evaluate_clip` with the `loss` kind's held-out loss on rank `rank`'s slice of `case` (a collective
    when `world_size` > 1)."""
    from stage2_contrastive.objective import ContrastiveLoss
    from stage2_contrastive.zeroshot import PairLoss, evaluate_clip
    scale, bias = LOSSES[loss]
    pair_loss = PairLoss(ContrastiveLoss(loss), torch.tensor(scale), None if bias is None else torch.tensor(bias),
                         LOSS_CHUNK)
    return evaluate_clip(lambda images: images, case.encode_text, case.batches(rank, world_size),
                         case.classnames, case.templates, loss=pair_loss)


def naive_loss(images: torch.Tensor, texts: torch.Tensor, kind: str) -> float:
    """The contrastive loss of one chunk of pairs (rows of unit vectors) from its formula, element by element:
    softmax ½·[mean_i −log softmax_j(t·x_i·y_j)_i + mean_j −log softmax_i(t·x_i·y_j)_j],
    sigmoid −(1/B)·Σ_i Σ_j log σ(z_ij·(t·x_i·y_j + b)), z = +1 on the diagonal, −1 elsewhere."""
    scale, bias = LOSSES[kind]
    sims = (images @ texts.T).tolist()
    n = len(sims)
    if kind == "softmax":
        def nll(i: int, row: list[float]) -> float:
            return -scale * row[i] + math.log(sum(math.exp(scale * s) for s in row))
        columns = [[sims[i][j] for i in range(n)] for j in range(n)]
        return 0.5 * (sum(nll(i, sims[i]) for i in range(n)) + sum(nll(j, columns[j]) for j in range(n))) / n
    return -sum(math.log(1 / (1 + math.exp(-(1 if i == j else -1) * (scale * sims[i][j] + bias))))
                for i in range(n) for j in range(n)) / n


def reference_metrics(case: EvalCase, kind: str = "softmax") -> dict[str, float]:
    """What evaluate_clip must return, by brute force in float64 on the caption STRINGS (no ids):
    zero-shot top-k (labelled cases): the label's rank among the classes (mean of each class's normalised
    prompt vectors) is ≤ k; i2t R@k: an image's caption is among the k distinct captions nearest to it;
    t2i R@k: for each distinct caption, an image carrying it is among the k images nearest to it; loss:
    the mean of `naive_loss` over the full chunks of LOSS_CHUNK consecutive pairs (a remainder left out)."""
    from stage2_contrastive.zeroshot import RECALL_AT
    images = F.normalize(case.images.double(), dim=-1)
    distinct = list(dict.fromkeys(case.captions))
    texts = F.normalize(torch.stack([case.text_vectors[c] for c in distinct]).double(), dim=-1)

    def recall(queries: torch.Tensor, query_captions: list[str], keys: torch.Tensor,
               key_captions: list[str], k: int) -> float:
        sims = (queries @ keys.T).tolist()
        nearest = [sorted(range(len(key_captions)), key=lambda j: -row[j])[:k] for row in sims]
        return sum(any(key_captions[j] == c for j in near) for near, c in zip(nearest, query_captions)) \
            / len(query_captions)

    metrics = {"n": len(case.captions)}
    if case.classnames:
        classifier = torch.stack([F.normalize(torch.stack([F.normalize(case.text_vectors[t(c)].double(), dim=0)
                                                           for t in case.templates]).mean(0), dim=0)
                                  for c in case.classnames])
        label_ranks = [1 + int((row > row[y]).sum()) for row, y in zip(images @ classifier.T, case.labels.tolist())]
        metrics.update(zeroshot_top1=sum(r <= 1 for r in label_ranks) / len(label_ranks),
                       zeroshot_top5=sum(r <= 5 for r in label_ranks) / len(label_ranks))
    pair_texts = F.normalize(torch.stack([case.text_vectors[c] for c in case.captions]).double(), dim=-1)
    size = min(LOSS_CHUNK, len(case.captions))  # a split smaller than a chunk is one chunk
    chunks = range(0, len(case.captions) - size + 1, size)
    metrics["loss"] = sum(naive_loss(images[s:s + size], pair_texts[s:s + size], kind) for s in chunks) / len(chunks)
    for k in RECALL_AT:
        metrics[f"i2t_R@{k}"] = recall(images, case.captions, texts, distinct, k)
        metrics[f"t2i_R@{k}"] = recall(texts, distinct, images, case.captions, k)
    return metrics


def main(out_dir: str) -> None:
    from common.config.sections import TrainConfig
    from common.train.accelerator import make_accelerator
    accelerator = make_accelerator(TrainConfig())  # the engine's accelerator: gloo on CPU
    rank, world_size = accelerator.process_index, accelerator.num_processes
    metrics = {f"{name}/{loss}": evaluate_case(make(), rank, world_size, loss)
               for name, make in CASES.items() for loss in LOSSES}
    if accelerator.is_main_process:
        Path(out_dir, f"metrics_world{accelerator.num_processes}.json").write_text(json.dumps(metrics))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
