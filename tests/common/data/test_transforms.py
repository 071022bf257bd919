"""The one augmentation module (common/data/transforms.py): shapes, normalisation, RGB conversion, flips,
and an eval transform identical to what open_clip rebuilds from the exported preprocess_cfg."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from open_clip.transform import AugmentationCfg, PreprocessCfg, image_transform_v2
from PIL import Image

from common.config.schema import load_config
from common.config.sections import AugmentConfig
from common.data.transforms import eval_transform, preprocess_cfg, train_transform
from common.errors import ConfigError
from stage2_contrastive.config import Stage2Config

SIZE = 28


def gray_digit(seed: int = 0) -> Image.Image:
    """A random 28×28 'L' image upscaled to 40×36 (non-square: exercises resize + crop)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)
    return Image.fromarray(pixels, mode="L").resize((40, 36), Image.BICUBIC)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P"])
@pytest.mark.parametrize("make", [train_transform, eval_transform])
def test_any_image_mode_becomes_a_3_channel_float32_tensor(make, mode):
    image = gray_digit().convert(mode)
    out = make(SIZE, AugmentConfig())(image)
    assert out.shape == (3, SIZE, SIZE) and out.dtype == torch.float32


@pytest.mark.parametrize("make", [train_transform, eval_transform])
def test_constant_gray_image_maps_to_value_minus_mean_over_std(make):
    cfg = AugmentConfig()
    out = make(SIZE, cfg)(Image.new("L", (50, 40), color=128))
    expected = (128 / 255 - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out, expected.float()[:, None, None].expand_as(out), atol=1e-5, rtol=0)


def test_grayscale_becomes_three_equal_channels_before_normalisation():
    cfg = AugmentConfig(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    out = eval_transform(SIZE, cfg)(gray_digit())
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_hflip_option_flips_some_samples_and_off_never_does():
    image = Image.fromarray(np.tile(np.arange(SIZE, dtype=np.uint8) * 9, (SIZE, 1)), mode="L")  # left→right ramp
    full_crop = AugmentConfig(scale=(1.0, 1.0))
    torch.manual_seed(0)
    flipped = [train_transform(SIZE, AugmentConfig(scale=(1.0, 1.0), hflip=True))(image) for _ in range(16)]
    decreasing = [bool(x[0, 0, 0] > x[0, 0, -1]) for x in flipped]
    assert 0 < sum(decreasing) < 16
    assert not any(bool(x[0, 0, 0] > x[0, 0, -1]) for x in (train_transform(SIZE, full_crop)(image)
                                                               for _ in range(8)))


def test_train_transform_is_seeded_by_torch_and_varies_between_draws():
    transform = train_transform(SIZE, AugmentConfig(hflip=True))
    torch.manual_seed(3)
    first = transform(gray_digit())
    torch.manual_seed(3)
    assert torch.equal(transform(gray_digit()), first)
    assert not torch.equal(transform(gray_digit()), first)


def test_train_transform_equals_open_clips_when_flip_is_off():
    cfg = AugmentConfig(scale=(0.4, 1.0))
    theirs = image_transform_v2(PreprocessCfg(**preprocess_cfg(SIZE, cfg)), is_train=True,
                                aug_cfg=AugmentationCfg(scale=cfg.scale))
    image = gray_digit().convert("RGB")
    torch.manual_seed(1)
    ours = train_transform(SIZE, cfg)(image)
    torch.manual_seed(1)
    assert torch.equal(ours, theirs(image))


@pytest.mark.parametrize("resize_mode", ["shortest", "longest", "squash"])
def test_eval_transform_equals_open_clips_from_the_exported_preprocess_cfg(resize_mode):
    cfg = AugmentConfig(resize_mode=resize_mode)
    theirs = image_transform_v2(PreprocessCfg(**preprocess_cfg(SIZE, cfg)), is_train=False)
    image = gray_digit(seed=7)
    assert torch.equal(eval_transform(SIZE, cfg)(image), theirs(image))


def test_preprocess_cfg_holds_what_open_clip_stores():
    cfg = preprocess_cfg(SIZE, AugmentConfig())
    assert cfg["size"] == SIZE and cfg["interpolation"] == "bicubic" and cfg["resize_mode"] == "shortest"
    assert len(cfg["mean"]) == len(cfg["std"]) == 3
    assert PreprocessCfg(**cfg).input_size == (3, SIZE, SIZE)


@pytest.mark.parametrize("bad, key", [("scale=[0.0, 1.0]", "data.augment.scale"),
                                      ("interpolation=nearest", "data.augment.interpolation"),
                                      ("resize_mode=crop", "data.augment.resize_mode")])
def test_bad_augment_config_names_the_key_at_load_time(bad, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(Stage2Config, None, [f"data.augment.{bad}"])
