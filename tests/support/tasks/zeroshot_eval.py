"""Eval cases for `evaluate_clip` whose answers are known, and a distributed run of them.

The 'encoders' are lookups: an image is its own feature vector and every caption or prompt string maps to
a fixed text vector, so the metrics depend only on the case. Each rank evaluates its contiguous, unevenly
sized slice of the rows (so `gather_rows` has to pad), in batches; the caption-only case instead deals
rows round-robin and tags them with their `index`, as the eval stream does (the gather must restore the
split's order for the chunked loss). Every case is also scored with both contrastive losses.

Run under torchrun, every rank evaluates its slice of every case and rank 0 writes the metrics:
`python -m tests.support.tasks.zeroshot_eval OUT_DIR` → OUT_DIR/metrics_world{W}.json ({case/loss: metrics}).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

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
