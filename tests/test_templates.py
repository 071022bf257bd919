"""The one prompt-template module (common/templates.py): open_clip's template sets, captions from class
labels, and the zero-shot classifier for any text encoder."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES

from common.templates import (TEMPLATE_SETS, build_zeroshot_classifier, caption_of, eval_caption,
                              get_templates, random_caption)

CLASSES = ["t-shirt", "trouser", "sneaker", "bag"]


def test_template_sets_are_open_clips():
    assert len(get_templates("openai")) == 80 and get_templates("openai") is OPENAI_IMAGENET_TEMPLATES
    assert len(get_templates("simple")) == 7
    assert eval_caption("bag", get_templates("short")) == "a photo of a bag."
    assert eval_caption("bag", get_templates("openai")) == "a bad photo of a bag."
    assert eval_caption("bag", get_templates("simple")) == "itap of a bag."


def test_unknown_template_set_names_the_config_key_and_valid_names():
    with pytest.raises(ValueError, match=r"data\.templates") as err:
        get_templates("imagenet")
    assert all(name in str(err.value) for name in TEMPLATE_SETS)


def test_format_string_templates_work_like_callables():
    assert eval_caption("bag", ["a {} on a table"]) == "a bag on a table"


@pytest.mark.parametrize("make_rng", [random.Random, np.random.default_rng])
def test_random_caption_is_deterministic_given_the_seed_and_uses_many_templates(make_rng):
    templates = get_templates("openai")
    first = [random_caption("bag", make_rng(0), templates) for _ in range(3)]
    assert len(set(first)) == 1  # same seed, same caption
    rng_a, rng_b = make_rng(5), make_rng(5)
    stream = [random_caption("bag", rng_a, templates) for _ in range(40)]
    assert stream == [random_caption("bag", rng_b, templates) for _ in range(40)]
    assert len(set(stream)) > 10 and all("bag" in c for c in stream)


def test_caption_of_prefers_the_samples_own_caption_then_its_label():
    templates = get_templates("short")
    assert caption_of({"txt": "a red bag", "cls": 3}, CLASSES, templates) == "a red bag"
    assert caption_of({"cls": 2}, CLASSES, templates, 0) == "a photo of a sneaker."
    with pytest.raises(ValueError, match="neither a caption"):
        caption_of({"key": "x"}, CLASSES, templates)


def one_hot_encoder(texts: list[str]) -> torch.Tensor:
    """Fake text encoder: 3 × one-hot of the class name found in the text (norm irrelevant)."""
    return torch.stack([3 * torch.eye(len(CLASSES))[next(i for i, c in enumerate(CLASSES) if c in t)]
                        for t in texts])


@pytest.mark.parametrize("batch_size", [1, 7, 256])
def test_zeroshot_classifier_of_one_hot_encoder_is_the_identity(batch_size):
    classifier = build_zeroshot_classifier(one_hot_encoder, CLASSES, get_templates("simple"), batch_size)
    assert classifier.shape == (len(CLASSES), len(CLASSES)) and classifier.dtype == torch.float32
    torch.testing.assert_close(classifier, torch.eye(len(CLASSES)))


def test_zeroshot_classifier_averages_normalised_template_embeddings():
    torch.manual_seed(0)
    table = {c: torch.randn(2, 5) for c in CLASSES}  # per class, one embedding per template
    templates = ["a {}", "two {}"]

    def encode(texts: list[str]) -> torch.Tensor:
        return torch.stack([table[t.split(" ", 1)[1]][0 if t.startswith("a ") else 1] * 10 for t in texts])

    classifier = build_zeroshot_classifier(encode, CLASSES, templates, batch_size=3)  # [D=5, C=4]
    expected = torch.stack([torch.nn.functional.normalize(table[c], dim=-1).mean(0) for c in CLASSES])
    assert classifier.shape == (5, len(CLASSES))
    torch.testing.assert_close(classifier, torch.nn.functional.normalize(expected, dim=-1).T)


def test_zeroshot_classifier_tracks_no_gradient():
    weight = torch.nn.Parameter(torch.eye(len(CLASSES)))
    classifier = build_zeroshot_classifier(lambda t: one_hot_encoder(t) @ weight, CLASSES, ["{}"])
    assert not classifier.requires_grad
