"""stage2_contrastive/objective.py, ContrastiveLoss on one rank: loss and gradients equal naive references written
from the formulas; world size 1 through the worker the multi-rank tests use (tests/support/dist_loss.py; 2 and
4 ranks: tests/multiprocess/test_contrastive_loss.py)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stage2_contrastive.objective import ContrastiveLoss
from tests.support import dist_loss

BATCH, DIM, TOL = 8, 16, 1e-6


def features(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text features, [BATCH, DIM] float64."""
    gen = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64), dim=-1)
    txt = F.normalize(torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64), dim=-1)
    return img, txt


def scalar(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64)


def naive_softmax(img, txt, scale):
    """Image→text and text→image cross-entropy, averaged:
    ½ [mean_i −log(e^{s·x_i·y_i} / Σ_j e^{s·x_i·y_j}) + mean_i −log(e^{s·y_i·x_i} / Σ_j e^{s·y_i·x_j})]
    """
    n = img.shape[0]
    image_to_text = text_to_image = 0.0
    for i in range(n):
        row = [scale * torch.dot(img[i], txt[j]) for j in range(n)]
        col = [scale * torch.dot(txt[i], img[j]) for j in range(n)]
        image_to_text = image_to_text - torch.log(torch.exp(row[i]) / sum(torch.exp(v) for v in row))
        text_to_image = text_to_image - torch.log(torch.exp(col[i]) / sum(torch.exp(v) for v in col))
    return (image_to_text / n + text_to_image / n) / 2


def naive_sigmoid(img, txt, scale, bias):
    """−(1/B) Σ_i Σ_j log σ(z_ij (s·x_i·y_j + b)), z = +1 on the diagonal, −1 elsewhere."""
    n, total = img.shape[0], 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            total = total + torch.log(1 / (1 + torch.exp(-z * (scale * torch.dot(img[i], txt[j]) + bias))))
    return -total / n


def value_and_grads(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """fn(*inputs) and its gradient w.r.t. every input."""
    leaves = [t.clone().requires_grad_(True) for t in inputs]
    value = fn(*leaves)
    return value.detach(), torch.autograd.grad(value, leaves)


def assert_matches(ours, reference, names):
    (loss, grads), (ref_loss, ref_grads) = ours, reference
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=TOL)
    for name, grad, ref_grad in zip(names, grads, ref_grads, strict=True):
        torch.testing.assert_close(grad, ref_grad, rtol=0, atol=TOL, msg=f"gradient w.r.t. {name}")


def test_softmax_loss_matches_naive_reference():
    img, txt = features(0)
    scale = scalar(1 / 0.07)  # CLIP's initial multiplier, well under the clamp
    ours = value_and_grads(ContrastiveLoss("softmax"), img, txt, scale)
    assert_matches(ours, value_and_grads(naive_softmax, img, txt, scale), ["image", "text", "logit_scale"])
    assert ours[0] > 0 and all(g.abs().sum() > 0 for g in ours[1])


def test_sigmoid_loss_matches_naive_reference():
    img, txt = features(1)
    scale, bias = scalar(10.0), scalar(-math.log(BATCH - 1))  # SigLIP's t' init, the 1/B-prior bias
    ours = value_and_grads(ContrastiveLoss("sigmoid"), img, txt, scale, bias)
    reference = value_and_grads(naive_sigmoid, img, txt, scale, bias)
    assert_matches(ours, reference, ["image", "text", "logit_scale", "logit_bias"])
    assert ours[0] > 0 and all(g.abs().sum() > 0 for g in ours[1])


def test_logit_scale_is_clamped_to_100():
    img, txt = features(2)
    loss_fn = ContrastiveLoss("softmax")
    at_100 = loss_fn(img, txt, scalar(100.0))
    loss_1000, grads = value_and_grads(loss_fn, img, txt, scalar(1000.0))
    torch.testing.assert_close(loss_1000, at_100.detach(), rtol=0, atol=0)
    assert grads[2] == 0  # the clamped multiplier gets no gradient
    assert not torch.allclose(loss_fn(img, txt, scalar(50.0)), at_100)  # below the cap the scale matters


def test_bad_kind_and_bias_errors():
    with pytest.raises(ValueError) as bad_kind:
        ContrastiveLoss("foo")
    assert str(bad_kind.value) == "unknown loss kind 'foo' — use 'softmax' or 'sigmoid' (config key: loss)"
    img, txt = features(3)
    with pytest.raises(ValueError, match="logit_bias is only used by the sigmoid loss"):
        ContrastiveLoss("softmax")(img, txt, scalar(10.0), scalar(-1.0))
    with pytest.raises(ValueError, match="the sigmoid loss needs logit_bias"):
        ContrastiveLoss("sigmoid")(img, txt, scalar(10.0))
    with pytest.raises(ValueError, match="rank 2 is outside world_size 2"):
        ContrastiveLoss("softmax", rank=2, world_size=2)


def test_world_size_one_runs_through_the_same_worker(tmp_path):
    (one_rank,) = dist_loss.run_ranks(1, tmp_path)
    for kind in dist_loss.KINDS:
        dist_loss.assert_ranks_equal_one_process([one_rank[kind]], dist_loss.loss_and_grads(kind, 0, 1))
