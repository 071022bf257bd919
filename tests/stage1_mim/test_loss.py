"""Masked cosine loss: matches a naive reference, ignores unmasked tokens, computes in fp32."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stage1_mim.loss import masked_cosine_loss


def _batch(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(2, 6, 5, generator=g), torch.randn(2, 6, 5, generator=g)
    mask = torch.rand(2, 6, generator=g) < 0.5
    mask[0, 0], mask[1, 5] = True, False
    return pred.to(dtype), target.to(dtype), mask


def test_matches_naive_loop_reference():
    pred, target, mask = _batch()
    terms = [1 - F.cosine_similarity(pred[b, n], target[b, n], dim=0)
             for b in range(2) for n in range(6) if mask[b, n]]
    torch.testing.assert_close(masked_cosine_loss(pred, target, mask), torch.stack(terms).mean())


def test_loss_is_a_distance_in_zero_two():
    pred, target, mask = _batch()
    assert masked_cosine_loss(target * 3.0, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_cosine_loss(-target, target, mask).item() == pytest.approx(2.0, abs=1e-6)


def test_unmasked_predictions_change_neither_loss_nor_gradient():
    pred, target, mask = _batch()
    changed = pred.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), 5) * 100
    changed[1, 5, 0] = float("nan")  # an unmasked token
    losses, grads = [], []
    for p in (pred, changed):
        p = p.clone().requires_grad_(True)
        loss = masked_cosine_loss(p, target, mask)
        loss.backward()
        losses.append(loss.detach())
        grads.append(p.grad)
    assert torch.equal(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    assert torch.all(grads[1][~mask] == 0)


def test_bf16_inputs_give_fp32_loss():
    pred, target, mask = _batch(dtype=torch.bfloat16)
    loss = masked_cosine_loss(pred, target, mask)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    reference = masked_cosine_loss(pred.float(), target.float(), mask)
    torch.testing.assert_close(loss, reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert masked_cosine_loss(pred, target, mask).dtype == torch.float32


def test_empty_mask_gives_a_non_finite_loss_the_engine_skips():
    pred, target, mask = _batch()
    assert torch.isnan(masked_cosine_loss(pred, target, torch.zeros_like(mask)))


def test_shape_mismatch_raises():
    pred, target, mask = _batch()
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        masked_cosine_loss(pred, target, mask[:, :3])
