"""The one prompt-template module (common/data/templates.py): open_clip's template sets, captions from
class labels, and the zero-shot classifier for any text encoder."""
from __future__ import annotations

from typing import get_args

import pytest
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES

from common.config.sections import TemplateSetName
from common.data.samples import PrivateRNG
from common.data.templates import TEMPLATE_SETS, build_zeroshot_classifier, caption_of, get_templates, render

CLASSES = ["t-shirt", "trouser", "sneaker", "bag"]


def test_template_sets_are_open_clips():
    assert len(get_templates("openai")) == 80 and get_templates("openai") is OPENAI_IMAGENET_TEMPLATES
    assert len(get_templates("simple")) == 7
    assert render(get_templates("short")[0], "bag") == "a photo of a bag."
    assert render(get_templates("openai")[0], "bag") == "a bad photo of a bag."
    assert render(get_templates("simple")[0], "bag") == "itap of a bag."


def test_template_set_names_are_the_configs_choices():
    assert set(TEMPLATE_SETS) == set(get_args(TemplateSetName))


def test_unknown_template_set_names_the_config_key_and_valid_names():
    with pytest.raises(ValueError, match=r"data\.templates") as err:
        get_templates("imagenet")
    assert all(name in str(err.value) for name in TEMPLATE_SETS)


def test_format_string_templates_work_like_callables():
    assert render("a {} on a table", "bag") == "a bag on a table"


def test_training_captions_follow_torchs_rng_and_use_many_templates():
    templates, meta = get_templates("openai"), {"cls": 3}
    torch.manual_seed(5)
    stream = [caption_of(meta, CLASSES, templates) for _ in range(40)]
    torch.manual_seed(5)
    assert stream == [caption_of(meta, CLASSES, templates) for _ in range(40)]  # seeded per loader worker
    assert len(set(stream)) > 10 and all("bag" in c for c in stream)


def test_caption_of_prefers_the_samples_own_caption_then_its_label():
    templates = get_templates("short")
    assert caption_of({"txt": "a red bag", "cls": 3}, CLASSES, templates) == "a red bag"
    assert caption_of({"cls": 2}, CLASSES, templates, 0) == "a photo of a sneaker."
    with pytest.raises(ValueError, match="neither a caption"):
        caption_of({"key": "x"}, CLASSES, templates)


def test_a_training_sample_with_several_captions_gets_one_drawn_by_the_streams_seed():
    meta = {"captions": [f"caption {i}" for i in range(6)], "txt": "caption 0", "cls": None}

    def draws(seed: int) -> list[str]:
        with PrivateRNG(seed):
            return [caption_of(meta, None, ()) for _ in range(12)]
    assert draws(0) == draws(0) and draws(0) != draws(1) and len(set(draws(0))) > 2
    assert caption_of(meta, None, (), index=0) == "caption 0"  # eval: the first caption


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
