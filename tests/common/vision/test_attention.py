"""Attention backends (common/attention.py): sdpa = math numerically, the state dict never changes,
xformers matches sdpa on CUDA and fails clearly elsewhere."""
from __future__ import annotations

import importlib.util
import logging

import pytest
import timm
import torch
import torch.nn.functional as F

import common.vision.attention
from common.vision.attention import (
    BACKENDS,
    XformersEvaAttention,
    check_attention_backend,
    set_attention_backend,
    xformers_unavailable_reason,
)

HAS_XFORMERS = importlib.util.find_spec("xformers") is not None
NUM_BLOCKS_TINY = 12


def attention_backend(model: torch.nn.Module) -> str | None:
    """The backend `model`'s Eva attention modules run: None when it has none, 'mixed' if they differ."""
    from timm.models.eva import EvaAttention
    names = {"xformers" if isinstance(m, XformersEvaAttention) else "sdpa" if m.fused_attn else "math"
             for m in model.modules() if isinstance(m, EvaAttention)}
    return None if not names else names.pop() if len(names) == 1 else "mixed"


def tiny_eva(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=56, num_classes=0, **kwargs)
    with torch.no_grad():  # timm zero-inits q/v bias: make them non-zero so the bias path is exercised
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias")):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return tiny_eva()


def test_sdpa_and_math_agree_on_tiny_eva(model):
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert set_attention_backend(model, "sdpa") == NUM_BLOCKS_TINY
        sdpa = model.forward_features(images)
        assert set_attention_backend(model, "math") == NUM_BLOCKS_TINY
        math = model.forward_features(images)
    set_attention_backend(model, "sdpa")
    assert sdpa.shape == (2, 1 + 16, 192)
    torch.testing.assert_close(math, sdpa, atol=1e-5, rtol=1e-5)


def test_sdpa_and_math_agree_on_one_block_with_rope_forward_and_backward(model):
    block = model.blocks[0]
    x = torch.randn(2, 17, 192, generator=torch.Generator().manual_seed(1))
    rope = model.rope.get_embed()  # [16, 2 * head_dim]: applied to the 16 patch tokens, not the cls token
    results = {}
    for backend in ("sdpa", "math"):
        set_attention_backend(block, backend)
        xi = x.clone().requires_grad_()
        out = block(xi, rope=rope)
        out.square().sum().backward()
        results[backend] = (out.detach(), xi.grad, block.attn.qkv.weight.grad.clone())
        block.zero_grad(set_to_none=True)
    set_attention_backend(block, "sdpa")
    for sdpa, math in zip(results["sdpa"], results["math"]):
        torch.testing.assert_close(math, sdpa, atol=1e-5, rtol=1e-5)


def test_switching_backend_never_changes_the_state_dict(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for backend in ("math", "sdpa", "math"):
        set_attention_backend(model, backend)
        after = model.state_dict()
        assert list(after) == list(before)
        for key, tensor in before.items():
            assert torch.equal(after[key], tensor), key
    set_attention_backend(model, "sdpa")
    assert attention_backend(model) == "sdpa"


def test_math_backend_is_timms_unfused_path(model):
    set_attention_backend(model, "math")
    assert attention_backend(model) == "math"
    assert all(not block.attn.fused_attn for block in model.blocks)
    set_attention_backend(model, "sdpa")
    assert all(block.attn.fused_attn for block in model.blocks)


def test_unknown_backend_names_the_config_key_and_valid_values(model):
    with pytest.raises(ValueError, match=r"model\.attention") as err:
        set_attention_backend(model, "flash")
    assert all(name in str(err.value) for name in BACKENDS)


def test_model_without_eva_attention_switches_nothing():
    assert set_attention_backend(torch.nn.Linear(2, 2), "math") == 0


def reference_xformers_kernel(q, k, v, p: float, scale: float) -> torch.Tensor:
    """xformers' contract ([B, N, heads, head_dim] in and out) computed by SDPA, for CPU tests."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         dropout_p=p, scale=scale)
    return out.transpose(1, 2)


@pytest.mark.skipif(HAS_XFORMERS, reason="xformers is installed: the CPU-tensor test covers it")
def test_xformers_missing_says_which_extra_to_install(model):
    with pytest.raises(ImportError, match=r"pip install 'evaclip\[gpu\]'"):
        set_attention_backend(model, "xformers")
    assert attention_backend(model) == "sdpa"  # nothing was switched


def test_xformers_on_cpu_tensors_says_use_sdpa(monkeypatch):
    if not HAS_XFORMERS:  # the CPU check comes before the kernel: only the import is stubbed
        monkeypatch.setattr(common.vision.attention, "xformers_kernel", lambda: None)
    model = tiny_eva()
    assert set_attention_backend(model, "xformers") == NUM_BLOCKS_TINY
    assert isinstance(model.blocks[0].attn, XformersEvaAttention)
    with pytest.raises(RuntimeError, match="needs CUDA tensors; use attention: sdpa on CPU"):
        model(torch.randn(1, 3, 56, 56))


VARIANTS = {  # Eva kwargs that reach EvaAttention's code paths
    "fused_qkv_bias": {},
    "qkv_bias_separate": {},
    "separate_qkv_proj": {"qkv_fused": False},
    "qk_norm_scale_norm_reg_tokens_rotate_half": {"qk_norm": True, "scale_attn_inner": True,
                                                  "num_reg_tokens": 2, "rope_rotate_half": True},
}


def forward_and_backward(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Features [B, tokens, width] of `images` and the gradients of their squared sum w.r.t. the images
    and every parameter."""
    model.zero_grad(set_to_none=True)
    images = images.clone().requires_grad_()
    features = model.forward_features(images)
    features.square().sum().backward()
    grads = {f"grad {name}": p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"features": features.detach(), "grad images": images.grad, **grads}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_xformers_forward_mirrors_timm_with_a_reference_kernel(monkeypatch, variant):
    """The module's own code (qkv + bias, q/k norm, RoPE on non-prefix tokens, norm, proj) equals timm's,
    forward and backward; only the kernel is stubbed (by SDPA), so this runs on CPU. Every block really
    runs XformersEvaAttention: the class is swapped and the stub is called once per block."""
    calls = []

    def counting_kernel(*args, **kwargs) -> torch.Tensor:
        calls.append(1)
        return reference_xformers_kernel(*args, **kwargs)

    monkeypatch.setattr(common.vision.attention, "xformers_kernel", lambda: None)
    monkeypatch.setattr(common.vision.attention, "xformers_attention", counting_kernel)
    model = tiny_eva(**VARIANTS[variant])
    for block in model.blocks:
        block.attn.qkv_bias_separate = variant == "qkv_bias_separate"
    images = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    sdpa = forward_and_backward(model, images)
    assert not calls
    assert set_attention_backend(model, "xformers") == NUM_BLOCKS_TINY
    assert all(type(block.attn) is XformersEvaAttention for block in model.blocks)
    assert attention_backend(model) == "xformers"
    xformers = forward_and_backward(model, images)
    assert len(calls) == NUM_BLOCKS_TINY
    assert xformers.keys() == sdpa.keys() and len(sdpa) > 2
    for name, expected in sdpa.items():
        torch.testing.assert_close(xformers[name], expected, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"{variant}, {name}: {m}")


XFORMERS_NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                                         reason="xformers memory_efficient_attention runs on CUDA tensors only")


def require_xformers_kernels() -> None:
    reason = xformers_unavailable_reason()
    if reason:
        pytest.skip(reason)


@XFORMERS_NEEDS_CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_xformers_matches_sdpa_on_cuda(dtype):
    require_xformers_kernels()
    model = tiny_eva().cuda()
    images = torch.randn(2, 3, 56, 56, device="cuda")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    outputs = {}
    for backend in ("sdpa", "xformers"):
        set_attention_backend(model, backend)
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            outputs[backend] = model.forward_features(images).float()
    assert isinstance(model.blocks[0].attn, XformersEvaAttention)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(outputs["xformers"], outputs["sdpa"], atol=2e-3, rtol=2e-3)
    set_attention_backend(model, "sdpa")
    assert type(model.blocks[0].attn).__name__ == "EvaAttention"


@XFORMERS_NEEDS_CUDA
def test_xformers_backward_matches_sdpa_on_cuda():
    require_xformers_kernels()
    block = tiny_eva().blocks[0].cuda().to(torch.bfloat16)
    x = torch.randn(2, 17, 192, device="cuda", dtype=torch.bfloat16)
    grads = {}
    for backend in ("sdpa", "xformers"):
        set_attention_backend(block, backend)
        xi = x.clone().requires_grad_()
        block(xi).float().square().mean().backward()
        grads[backend] = xi.grad.float()
    torch.testing.assert_close(grads["xformers"], grads["sdpa"], atol=2e-3, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sdpa_and_math_agree_on_cuda():
    model = tiny_eva().cuda()
    images = torch.randn(2, 3, 56, 56, device="cuda")
    outputs = {}
    for backend in ("sdpa", "math"):
        set_attention_backend(model, backend)
        with torch.no_grad():
            outputs[backend] = model.forward_features(images)
    torch.testing.assert_close(outputs["math"], outputs["sdpa"], atol=1e-4, rtol=1e-4)  # TF32-free fp32


@pytest.mark.parametrize("reason, expected", [("xformers memory_efficient_attention needs CUDA", "sdpa"),
                                              (None, "xformers")])
def test_auto_picks_xformers_only_where_its_kernels_load_and_says_which(monkeypatch, caplog, reason, expected):
    monkeypatch.setattr(common.vision.attention, "xformers_unavailable_reason", lambda: reason)
    monkeypatch.setattr(common.vision.attention, "xformers_kernel", lambda: None)  # the swap only
    check_attention_backend("auto")  # never a config error: it falls back
    model = tiny_eva()
    with caplog.at_level(logging.INFO, logger="evaclip"):
        assert set_attention_backend(model, "auto") == NUM_BLOCKS_TINY
    assert attention_backend(model) == expected
    assert f"attention: auto → {expected}" in caplog.text
