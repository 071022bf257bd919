"""Zero-shot classification and retrieval on cases whose answers are known (tests/tasks/zeroshot_eval.py):
12 classes, top-5 and R@10 that are not 1.0, repeated captions, distinct captions sharing a crc32, and
the same metrics from 2 processes as from 1."""
from __future__ import annotations

import json
import subprocess
import zlib

import pytest
import torch
import torch.nn.functional as F

from common.evaluation.topk import topk_accuracy
from stage2_contrastive.zeroshot import RECALL_AT, caption_ids, retrieval_recall
from tests.launch import ROOT, subprocess_env, torchrun
from tests.tasks.zeroshot_eval import CASES, CRC32_TWINS, LABEL_RANKS, EvalCase, evaluate_case, ranked_case


def reference_metrics(case: EvalCase) -> dict[str, float]:
    """What evaluate_clip must return, by brute force in float64 on the caption STRINGS (no ids):
    zero-shot top-k: the label's rank among the classes (mean of each class's normalised prompt
    vectors) is ≤ k; i2t R@k: an image's caption is among the k distinct captions nearest to it;
    t2i R@k: for each distinct caption, an image carrying it is among the k images nearest to it."""
    images = F.normalize(case.images.double(), dim=-1)
    classifier = torch.stack([F.normalize(torch.stack([F.normalize(case.text_vectors[t(c)].double(), dim=0)
                                                       for t in case.templates]).mean(0), dim=0)
                              for c in case.classnames])
    logits = images @ classifier.T
    label_ranks = [1 + int((row > row[y]).sum()) for row, y in zip(logits, case.labels.tolist())]
    distinct = list(dict.fromkeys(case.captions))
    texts = F.normalize(torch.stack([case.text_vectors[c] for c in distinct]).double(), dim=-1)

    def recall(queries: torch.Tensor, query_captions: list[str], keys: torch.Tensor,
               key_captions: list[str], k: int) -> float:
        sims = (queries @ keys.T).tolist()
        nearest = [sorted(range(len(key_captions)), key=lambda j: -row[j])[:k] for row in sims]
        return sum(any(key_captions[j] == c for j in near) for near, c in zip(nearest, query_captions)) \
            / len(query_captions)

    metrics = {"n": len(case.captions), "zeroshot_top1": sum(r <= 1 for r in label_ranks) / len(label_ranks),
               "zeroshot_top5": sum(r <= 5 for r in label_ranks) / len(label_ranks)}
    for k in RECALL_AT:
        metrics[f"i2t_R@{k}"] = recall(images, case.captions, texts, distinct, k)
        metrics[f"t2i_R@{k}"] = recall(texts, distinct, images, case.captions, k)
    return metrics


def single_process(case: EvalCase) -> dict[str, float]:
    return evaluate_case(case)


def test_topk_accuracy_counts_labels_ranked_within_k():
    logits = torch.arange(12, 0, -1.0).expand(6, 12)  # in every row, class c ranks (c + 1)-th of 12
    label_ranks = torch.tensor([1, 2, 5, 6, 10, 12])
    assert topk_accuracy(logits, label_ranks - 1, (1, 5, 10)).tolist() == [1.0, 3.0, 5.0]


def test_retrieval_recall_uses_caption_ids_as_positives():
    queries = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    keys = F.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]), dim=-1)
    recall = retrieval_recall(queries, keys, torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), ks=(1, 3))
    assert recall == [2 / 3, 1.0]  # the third query's positive is the least similar key


def test_evaluate_clip_on_twelve_classes_with_known_ranks():
    """Image i ranks its true class LABEL_RANKS[i]-th: top-k and i2t R@k are the fraction with rank ≤ k."""
    metrics = single_process(ranked_case())
    fraction = {k: sum(r <= k for r in LABEL_RANKS) / len(LABEL_RANKS) for k in (1, 5, 10)}
    assert (fraction[1], fraction[5], fraction[10]) == (7 / 24, 15 / 24, 20 / 24)
    assert metrics["n"] == 24
    assert metrics["zeroshot_top1"] == fraction[1] and metrics["zeroshot_top5"] == fraction[5]
    assert [metrics[f"i2t_R@{k}"] for k in RECALL_AT] == [fraction[k] for k in RECALL_AT]


@pytest.mark.parametrize("name", list(CASES))
def test_evaluate_clip_equals_brute_force_on_caption_strings(name):
    case = CASES[name]()
    metrics, expected = single_process(case), reference_metrics(case)
    assert metrics == pytest.approx(expected, abs=1e-12)
    # the cases can tell the directions apart and are not saturated
    assert [expected[f"t2i_R@{k}"] for k in RECALL_AT] != [expected[f"i2t_R@{k}"] for k in RECALL_AT]
    assert 0 < expected["i2t_R@1"] < expected["i2t_R@10"] < 1 and expected["t2i_R@1"] < 1


def test_retrieval_ranks_each_distinct_caption_once():
    """6 'cat' images and 1 'dog' image that looks more like a cat. i2t ranks the 2 distinct captions, so
    the dog image finds its caption at R@5 (behind 6 copies of 'a cat.' it would not); t2i asks once per
    distinct caption: 'a dog.' misses at R@1 (a doggy cat image is nearer), 'a cat.' hits, R@1 = 1/2."""
    texts = {"a cat.": torch.tensor([1.0, 0.0]), "a dog.": torch.tensor([0.0, 1.0])}
    images = torch.tensor([[1.0, 0.0]] * 5 + [[0.3, 0.95], [0.8, 0.6]])
    case = EvalCase(["cat", "dog"], images, torch.tensor([0] * 6 + [1]), ["a cat."] * 6 + ["a dog."], texts,
                    templates=(lambda c: f"a {c}.",))
    metrics = single_process(case)
    assert (metrics["i2t_R@1"], metrics["i2t_R@5"]) == (5 / 7, 1.0)
    assert (metrics["t2i_R@1"], metrics["t2i_R@5"]) == (1 / 2, 1.0)
    assert metrics == pytest.approx(reference_metrics(case), abs=1e-12)


def test_distinct_captions_with_equal_crc32_stay_distinct():
    """'plumless' and 'buckeroo' share a crc32. Both images look like 'plumless', so the 'buckeroo' image
    retrieves the wrong caption first: i2t R@1 = 1/2 (merged captions would give 1)."""
    assert zlib.crc32(CRC32_TWINS[0].encode()) == zlib.crc32(CRC32_TWINS[1].encode())
    ids = caption_ids([*CRC32_TWINS, CRC32_TWINS[0]])
    assert ids.tolist() == [0, 1, 0]
    texts = {CRC32_TWINS[0]: torch.tensor([1.0, 0.0]), CRC32_TWINS[1]: torch.tensor([0.0, 1.0])}
    case = EvalCase(list(CRC32_TWINS), torch.tensor([[1.0, 0.0], [0.9, 0.1]]), torch.tensor([0, 1]),
                    list(CRC32_TWINS), texts, templates=(lambda c: c,))
    metrics = single_process(case)
    assert metrics["i2t_R@1"] == 0.5 and metrics["t2i_R@1"] == 1.0
    assert metrics["zeroshot_top1"] == 0.5 and metrics["zeroshot_top5"] == 1.0
    assert metrics == pytest.approx(reference_metrics(case), abs=1e-12)


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path):
    """torchrun, 2 gloo processes, each evaluating its uneven slice (14 / 12 rows of the random case):
    the summed counts and gathered features give exactly the single-process metrics."""
    proc = subprocess.run(torchrun(2, "tests.tasks.zeroshot_eval", str(tmp_path)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "metrics_world2.json").read_text())
    assert set(two) == set(CASES)
    for name, make in CASES.items():
        case = make()
        assert [len(case.rows(r, 2)) for r in range(2)] != [len(case.captions) / 2] * 2
        assert two[name] == pytest.approx(single_process(case), abs=1e-12), name
