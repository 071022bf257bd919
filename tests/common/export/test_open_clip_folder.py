"""common/export/open_clip_folder.py, verified by the real library: stock open_clip reloads our folder and gives
the same embeddings and logits, its preprocess equals our eval transform; a folder that is no run, or damaged
weights, is a one-line error."""
from __future__ import annotations

import gzip
import os

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from common.config.sections import AugmentConfig
from common.data.transforms import eval_transform
from common.errors import NotARunError
from common.export import export_open_clip
from stage2_contrastive.model import build_tokenizer
from tests.support.run_folders import IMAGE_SIZE, trained_like_run

DEVICE = os.environ.get("EVACLIP_TEST_DEVICE", "cpu")  # scripts/gpu_check.sh sets cuda
TEXTS = ["a photo of a sneaker.", "a bag.", "an ankle boot on a white background"]


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


def test_not_a_run_and_corrupt_weights_are_one_line_errors(tmp_path):
    with pytest.raises(NotARunError, match="not a stage-2 run folder"):
        export_open_clip(tmp_path, tmp_path / "out")
    _, _, run = trained_like_run(tmp_path, "softmax")
    (run / "model.safetensors").write_bytes(b"definitely not safetensors")
    with pytest.raises(ValueError, match="cannot read weights file") as info:
        export_open_clip(run, tmp_path / "out")
    assert "\n" not in str(info.value)
