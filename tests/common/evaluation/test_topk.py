"""common/evaluation/topk.py: the top-k counter."""
from __future__ import annotations

import torch

from common.evaluation.topk import topk_accuracy


def test_topk_accuracy_counts_labels_ranked_within_k():
    logits = torch.arange(12, 0, -1.0).expand(6, 12)  # in every row, class c ranks (c + 1)-th of 12
    label_ranks = torch.tensor([1, 2, 5, 6, 10, 12])
    assert topk_accuracy(logits, label_ranks - 1, (1, 5, 10)).tolist() == [1.0, 3.0, 5.0]
