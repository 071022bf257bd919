"""stage2_contrastive/zeroshot.py, held-out evaluation on cases whose answers are known
(tests/support/tasks/zeroshot_eval.py): zero-shot on 12 classes, top-5 and R@10 that are not 1.0, repeated
captions, distinct captions sharing a crc32, caption-only pairs without labels, the softmax and sigmoid losses
over chunks of the split. (2 processes: tests/multiprocess/test_zeroshot.py.)"""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.nn.functional as F

from stage2_contrastive.zeroshot import RECALL_AT, caption_ids, retrieval_recall
from tests.support.tasks.zeroshot_eval import (
    CASES,
    CRC32_TWINS,
    LABEL_RANKS,
    LOSS_CHUNK,
    LOSSES,
    EvalCase,
    captions_case,
    evaluate_case,
    ranked_case,
    reference_metrics,
)


def single_process(case: EvalCase) -> dict[str, float]:
    return evaluate_case(case)


def assert_matches(metrics: dict[str, float], expected: dict[str, float]) -> None:
    """Equal to the reference: counts and recalls to 1e-12, the loss (float32 features) to 1e-6."""
    assert set(metrics) == set(expected)
    assert metrics["loss"] == pytest.approx(expected["loss"], abs=1e-6)
    assert {k: v for k, v in metrics.items() if k != "loss"} == pytest.approx(
        {k: v for k, v in expected.items() if k != "loss"}, abs=1e-12)


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


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("name", list(CASES))
def test_evaluate_clip_equals_brute_force_on_caption_strings(name, loss):
    case = CASES[name]()
    metrics, expected = evaluate_case(case, loss=loss), reference_metrics(case, loss)
    assert_matches(metrics, expected)
    # the cases can tell the directions apart and are not saturated
    assert [expected[f"t2i_R@{k}"] for k in RECALL_AT] != [expected[f"i2t_R@{k}"] for k in RECALL_AT]
    assert 0 < expected["i2t_R@1"] < expected["i2t_R@10"] < 1 and expected["t2i_R@1"] < 1


def test_caption_only_pairs_get_loss_and_retrieval_without_labels():
    """No class names, no labels: retrieval over the pairs (each image's own caption is its positive) and
    the loss, and no zero-shot number at all."""
    case = captions_case()
    metrics = single_process(case)
    assert set(metrics) == {"n", "loss", *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in RECALL_AT)}
    assert metrics["n"] == 30 and 0 < metrics["i2t_R@1"] < metrics["i2t_R@10"] < 1
    assert metrics["loss"] == pytest.approx(reference_metrics(case)["loss"], abs=1e-6)


def test_the_loss_is_taken_over_the_splits_order_not_the_order_batches_arrive_in():
    """Rank 0's rows of a round-robin deal, then rank 1's: `index` restores the split's order, so the
    chunks of the loss hold the same pairs as in one process."""
    case = captions_case()
    from stage2_contrastive.objective import ContrastiveLoss
    from stage2_contrastive.zeroshot import PairLoss, embed_pairs
    dealt = [b for r in range(2) for b in case.batches(r, 2)]
    pairs = embed_pairs(lambda x: x, case.encode_text, dealt)
    assert pairs.captions == case.captions
    loss = PairLoss(ContrastiveLoss("softmax"), torch.tensor(10.0), None, LOSS_CHUNK)
    unsorted = PairLoss(ContrastiveLoss("softmax"), torch.tensor(10.0), None, LOSS_CHUNK)(
        embed_pairs(lambda x: x, case.encode_text, [{k: v for k, v in b.items() if k != "index"} for b in dealt]))
    assert loss(pairs) == pytest.approx(reference_metrics(case)["loss"], abs=1e-6)
    assert abs(unsorted - loss(pairs)) > 1e-3  # the order matters: this test can tell


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
    assert_matches(metrics, reference_metrics(case))


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
    assert_matches(metrics, reference_metrics(case))
