"""Contrastive losses against naive references written from their formulas."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stage2_contrastive.loss import ContrastiveLoss


def features(seed: int = 0, batch: int = 8, dim: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1),
            F.normalize(torch.randn(batch, dim, generator=gen, dtype=torch.float64), dim=-1))


def naive_softmax(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """mean over i of −log softmax_j(s·x_i·y_j)[i], image→text and text→image, averaged."""
    n, total = img.shape[0], 0.0
    for i in range(n):
        row_i = torch.stack([scale * img[i] @ txt[j] for j in range(n)])
        row_t = torch.stack([scale * txt[i] @ img[j] for j in range(n)])
        total = total - (row_i[i] - torch.logsumexp(row_i, 0)) - (row_t[i] - torch.logsumexp(row_t, 0))
    return total / (2 * n)


def naive_sigmoid(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """−(1/B) Σ_i Σ_j log σ(z_ij (t·x_i·y_j + b)), z = +1 on the diagonal, −1 elsewhere."""
    n, total = img.shape[0], 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total - torch.log(torch.sigmoid(z * (scale * img[i] @ txt[j] + bias)))
    return total / n


def grads_of(fn, *tensors):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def test_softmax_loss_matches_naive_reference():
    img, txt = features()
    scale = torch.tensor(math.exp(2.3), dtype=torch.float64)
    ours, ours_g = grads_of(lambda a, b, s: ContrastiveLoss("softmax")(a, b, s), img, txt, scale)
    ref, ref_g = grads_of(naive_softmax, img, txt, scale)
    assert torch.allclose(ours, ref, atol=1e-10)
    for a, b in zip(ours_g, ref_g):
        assert torch.allclose(a, b, atol=1e-10)


def test_sigmoid_loss_matches_naive_reference():
    img, txt = features(1)
    scale, bias = torch.tensor(10.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    ours, ours_g = grads_of(lambda a, b, s, c: ContrastiveLoss("sigmoid")(a, b, s, c), img, txt, scale, bias)
    ref, ref_g = grads_of(naive_sigmoid, img, txt, scale, bias)
    assert torch.allclose(ours, ref, atol=1e-10)
    for a, b in zip(ours_g, ref_g):
        assert torch.allclose(a, b, atol=1e-10)


def test_logit_scale_is_clamped_to_100():
    img, txt = features(2)
    loss = ContrastiveLoss("softmax")
    at_100 = loss(img, txt, torch.tensor(100.0, dtype=torch.float64))
    assert torch.equal(loss(img, txt, torch.tensor(1000.0, dtype=torch.float64)), at_100)
    assert not torch.equal(loss(img, txt, torch.tensor(50.0, dtype=torch.float64)), at_100)


def test_bad_kind_and_bias_errors():
    with pytest.raises(ValueError, match="unknown loss kind 'hinge' — use 'softmax' or 'sigmoid'"):
        ContrastiveLoss("hinge")
    img, txt = features()
    with pytest.raises(ValueError, match="logit_bias is only used by the sigmoid loss"):
        ContrastiveLoss("softmax")(img, txt, torch.tensor(10.0), torch.tensor(-1.0))
    with pytest.raises(ValueError, match="needs a logit_bias"):
        ContrastiveLoss("sigmoid")(img, txt, torch.tensor(10.0))
