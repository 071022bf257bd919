"""Export verified by the real libraries: stock open_clip reloads our folder and gives the same
embeddings and logits; its preprocess equals our eval transform; timm reloads the trunk."""
from __future__ import annotations

import gzip
import os

import numpy as np
import open_clip
import pytest
import timm
import torch
from PIL import Image

from common.errors import NotARunError
from common.weights.formats import ClipConfig, ClipInfo, write_clip, write_hf_text_files
from common.config.sections import AugmentConfig
from common.data.transforms import eval_transform, preprocess_cfg
from common.export import export_open_clip, export_timm
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_clip, build_tokenizer, open_clip_model_cfg
from stage2_contrastive.objective import Objective

IMAGE_SIZE = 28
DEVICE = os.environ.get("EVACLIP_TEST_DEVICE", "cpu")  # scripts/gpu_check.sh sets cuda
TEXTS = ["a photo of a sneaker.", "a bag.", "an ankle boot on a white background"]


def tiny_cfg() -> ModelConfig:
    return ModelConfig(embed_dim=32, text=TextConfig(context_length=16, width=32, heads=2, layers=2))


def trained_like_run(tmp_path, loss: str, cfg: ModelConfig | None = None, image_size: int = IMAGE_SIZE,
                     name: str | None = None):
    """A 'run folder' as stage 2 writes it (an HF text tower's files included), from a randomly
    initialised model with perturbed scalars: (model, its config, the folder)."""
    torch.manual_seed(0)
    cfg = cfg or tiny_cfg()
    objective = Objective.from_config(loss, cfg, 16)
    model = build_clip(cfg, objective, image_size).eval()
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-3.5)
    run = tmp_path / (name or f"run_{loss}")
    run.mkdir()
    model_cfg = open_clip_model_cfg(cfg, objective, image_size)
    write_clip(run, model.state_dict(), ClipConfig(model_cfg, preprocess_cfg(image_size, AugmentConfig()),
                                                    ClipInfo(2, loss, cfg.vision_model, image_size)))
    if cfg.text.hf_model:
        write_hf_text_files(run, model_cfg["text_cfg"]["hf_model_name"], build_tokenizer(cfg))
    return model, cfg, run


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_open_clip_reloads_export_with_identical_outputs(tmp_path, loss):
    ours, cfg, run = trained_like_run(tmp_path, loss)
    out = export_open_clip(run, tmp_path / "export")
    theirs, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    theirs.eval().to(DEVICE)
    ours.to(DEVICE)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    assert torch.equal(tokenizer(TEXTS), build_tokenizer(cfg)(TEXTS))
    images = torch.randn(3, 3, IMAGE_SIZE, IMAGE_SIZE, device=DEVICE)
    tokens = tokenizer(TEXTS).to(DEVICE)
    with torch.no_grad():
        a, b = tuple(ours(images, tokens).values()), theirs(images, tokens)  # ours: output_dict
    assert len(a) == len(b) == (4 if loss == "sigmoid" else 3)
    for mine, stock in zip(a, b):
        assert (mine - stock).abs().max() < 1e-5
    logits_ours = a[2] * a[0] @ a[1].T
    logits_theirs = b[2] * b[0] @ b[1].T
    assert (logits_ours - logits_theirs).abs().max() < 1e-5
    if loss == "sigmoid":
        assert theirs.logit_bias.item() == pytest.approx(-3.5)


def fashion_mnist_image() -> Image.Image:
    from common.datasets.fashion_mnist import locate_fashion_mnist
    path = locate_fashion_mnist() / "t10k-images-idx3-ubyte.gz"
    with gzip.open(path) as f:
        pixels = np.frombuffer(f.read(), dtype=np.uint8, offset=16)[: 28 * 28]
    return Image.fromarray(pixels.reshape(28, 28), mode="L")


def test_open_clip_preprocess_equals_our_eval_transform(tmp_path):
    _, _, run = trained_like_run(tmp_path, "softmax")
    out = export_open_clip(run, tmp_path / "export")
    _, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{out}")
    image = fashion_mnist_image()
    ours = eval_transform(IMAGE_SIZE, AugmentConfig())(image)
    assert ours.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert torch.equal(preprocess(image), ours)


def test_timm_reloads_exported_trunk(tmp_path):
    ours, cfg, run = trained_like_run(tmp_path, "softmax")
    info = export_timm(run, tmp_path / "trunk.safetensors")
    trunk = timm.create_model(info["model_name"], pretrained=False, checkpoint_path=info["file"],
                              img_size=info["image_size"], num_classes=0).eval()
    x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        assert torch.allclose(trunk.forward_features(x), ours.visual.trunk.forward_features(x), atol=1e-6)


def test_not_a_run_and_corrupt_weights_are_one_line_errors(tmp_path):
    with pytest.raises(NotARunError, match="not a stage-2 run folder"):
        export_open_clip(tmp_path, tmp_path / "out")
    _, _, run = trained_like_run(tmp_path, "softmax")
    (run / "model.safetensors").write_bytes(b"definitely not safetensors")
    with pytest.raises(ValueError, match="cannot read weights file") as info:
        export_open_clip(run, tmp_path / "out")
    assert "\n" not in str(info.value)
