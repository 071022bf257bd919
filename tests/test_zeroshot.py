"""Zero-shot classification and retrieval on hand-made cases whose answers are known."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import PartialState

from common.accuracy import topk_accuracy
from stage2_contrastive.zeroshot import caption_id, evaluate_clip, retrieval_recall

CLASSES = ["cat", "dog", "bird"]
TEMPLATES = [lambda c: f"a photo of a {c}.", lambda c: f"a {c}."]


def one_hot_text(texts: list[str]) -> torch.Tensor:
    """A text 'encoder' that knows which class a prompt names: one-hot over CLASSES (+ noise dim)."""
    out = torch.zeros(len(texts), 4)
    for i, text in enumerate(texts):
        out[i, next(j for j, c in enumerate(CLASSES) if c in text)] = 1.0
    return out


def test_topk_accuracy_counts_hits():
    logits = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.1, 0.8, 0.1]])
    assert topk_accuracy(logits, torch.tensor([0, 0, 1]), (1, 2)).tolist() == [2.0, 2.0]
    assert topk_accuracy(logits, torch.tensor([0, 1, 1]), (1, 2)).tolist() == [2.0, 3.0]


def test_retrieval_recall_uses_caption_ids_as_positives():
    queries = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    keys = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]), dim=-1)
    recall = retrieval_recall(queries, keys, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), ks=(1, 3))
    assert recall == [2 / 3, 1.0]  # the third query's positive is the least similar key


def test_evaluate_clip_on_a_known_answer():
    # images embed exactly as their class's one-hot text; image 3 is deliberately a 'dog' labelled 'cat'
    labels = torch.tensor([0, 1, 2, 0])
    shown = torch.tensor([0, 1, 2, 1])
    images = F.one_hot(shown, 4).float()
    captions = [TEMPLATES[0](CLASSES[c]) for c in labels.tolist()]
    batches = [{"image": images[:2], "label": labels[:2], "caption": captions[:2]},
               {"image": images[2:], "label": labels[2:], "caption": captions[2:]}]
    state = PartialState()
    metrics = evaluate_clip(lambda x: x, one_hot_text, batches, CLASSES, TEMPLATES, state)
    assert metrics["n"] == 4
    assert metrics["zeroshot_top1"] == 0.75 and metrics["zeroshot_top5"] == 1.0
    assert metrics["i2t_R@1"] == 0.75 and metrics["i2t_R@10"] == 1.0


def test_caption_id_is_stable():
    assert caption_id("a cat") == caption_id("a cat") != caption_id("a dog")


def test_retrieval_runs_over_unique_captions():
    # 6 images of 2 classes, one caption per class: i2t ranks the 2 distinct texts, not 6 copies
    img = F.normalize(torch.tensor([[1.0, 0.0]] * 3 + [[0.0, 1.0]] * 3), dim=-1)
    captions = ["a cat."] * 3 + ["a dog."] * 3
    text_of = {"a cat.": [1.0, 0.0], "a dog.": [0.0, 1.0]}
    batches = [{"image": img, "label": torch.tensor([0] * 3 + [1] * 3), "caption": captions}]
    metrics = evaluate_clip(lambda x: x, lambda t: torch.tensor([text_of[c] for c in t]), batches,
                            ["cat", "dog"], [lambda c: f"a {c}."], PartialState())
    assert metrics["i2t_R@1"] == 1.0 and metrics["t2i_R@1"] == 1.0
