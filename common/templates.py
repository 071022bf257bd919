"""ONE prompt-template module: template sets (open_clip's bundled OpenAI ImageNet sets), captions
synthesised from class labels, and the zero-shot classifier (open_clip's own builder, fed by any
text encoder)."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from open_clip.zero_shot_classifier import build_zero_shot_classifier
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

Template = Callable[[str], str]
TEMPLATE_SETS: dict[str, Sequence[Template]] = {
    "openai": OPENAI_IMAGENET_TEMPLATES,   # the 80 CLIP ImageNet prompts
    "simple": SIMPLE_IMAGENET_TEMPLATES,   # CLIP's short 7-prompt ensemble
    "photo": (lambda c: f"a photo of a {c}.",),
}


def get_templates(name: str) -> Sequence[Template]:
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set '{name}' — use one of {sorted(TEMPLATE_SETS)} "
                         "(config key: data.templates)")
    return TEMPLATE_SETS[name]


def caption_of(meta: dict[str, Any], classnames: Sequence[str] | None, templates: Sequence[Template],
               index: int | None = None) -> str:
    """A sample's own caption (`txt`), else one synthesised from its label `cls`: template `index`
    (deterministic, eval) or, when `index` is None, a random one drawn from torch's RNG (training:
    seeded per loader worker, so the stream stays reproducible)."""
    if meta.get("txt"):
        return meta["txt"]
    label = meta.get("cls")
    if label is None or not classnames:
        raise ValueError(f"sample {meta.get('key')} has neither a caption (txt) nor a class label (cls)")
    if index is None:
        index = int(torch.randint(len(templates), ()))
    return templates[index % len(templates)](classnames[label])


class _StringBatch(list):
    """Lets open_clip's builder pass plain strings through its `tokenizer(texts).to(device)` call."""

    def to(self, device: Any) -> "_StringBatch":
        return self


class _TextEncoderAdapter:
    def __init__(self, encode_text: Callable[[list[str]], torch.Tensor]):
        self.encode = encode_text

    def encode_text(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        features = self.encode(list(texts)).float()
        return F.normalize(features, dim=-1) if normalize else features


@torch.no_grad()
def build_zeroshot_classifier(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                              templates: Sequence[Template]) -> torch.Tensor:
    """Classifier weights `[D, C]`: per class, the re-normalised mean of its L2-normalised template
    embeddings (open_clip's `build_zero_shot_classifier`), for any `encode_text(list[str]) -> [N, D]`."""
    return build_zero_shot_classifier(_TextEncoderAdapter(encode_text), _StringBatch, list(classnames),
                                      list(templates), num_classes_per_batch=10)
