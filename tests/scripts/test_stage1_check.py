"""scripts/stage1_check.py: the image-blind baseline (one target direction per position) scores targets that
depend on the position alone as perfect, and counts masked positions only."""
from __future__ import annotations

import pytest
import torch

from scripts.stage1_check import image_blind_cos


def test_image_blind_baseline_scores_position_constant_targets_as_perfect():
    per_position = torch.randn(4, 8)                                    # [N, D]
    targets = per_position.expand(3, 4, 8) * torch.rand(3, 4, 1).add(0.5)  # same directions, any scale
    mask = torch.tensor([[True, False, False, True]] * 3)
    assert image_blind_cos(per_position, targets, mask).item() == pytest.approx(1.0, abs=1e-6)
    flipped = targets.clone()
    flipped[:, 0] *= -1                                                 # masked position 0 now opposite
    assert image_blind_cos(per_position, flipped, mask).item() == pytest.approx(0.0, abs=1e-6)
    flipped_unmasked = targets.clone()
    flipped_unmasked[:, 1] *= -1                                        # a visible position: not counted
    assert image_blind_cos(per_position, flipped_unmasked, mask).item() == pytest.approx(1.0, abs=1e-6)
