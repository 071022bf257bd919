"""ONE prompt-template module: template sets (open_clip's bundled ImageNet prompts, not retyped),
captions synthesised from class labels (stage-2 data), and the zero-shot classifier (stage-1 probe,
stage-2 eval) fed by any text encoder. Config key: `data.templates`."""
from __future__ import annotations

from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from common.config.sections import TemplateSetName

Template = Union[Callable[[str], str], str]  # a callable, or a format string with one positional `{}`
TEMPLATE_SETS: dict[TemplateSetName, Sequence[Template]] = {  # names: the config's `TemplateSetName`
    "openai": OPENAI_IMAGENET_TEMPLATES,  # the 80 CLIP ImageNet prompts
    "simple": SIMPLE_IMAGENET_TEMPLATES,  # CLIP's 7-prompt subset
    "short": ("a photo of a {}.",),       # one plain prompt
}


def get_templates(name: str) -> Sequence[Template]:
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set '{name}' — use one of {', '.join(TEMPLATE_SETS)} "
                         "(config key: data.templates)")
    return TEMPLATE_SETS[name]


def render(template: Template, classname: str) -> str:
    return template.format(classname) if isinstance(template, str) else template(classname)


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
    return render(templates[index % len(templates)], classnames[label])


@torch.no_grad()
def build_zeroshot_classifier(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                              templates: Sequence[Template], batch_size: int = 256) -> torch.Tensor:
    """Classifier weights `[D, C]` float32: per class, the re-normalised mean of its L2-normalised
    template embeddings (open_clip's `build_zero_shot_classifier`), for any `encode_text(texts) -> [N, D]`.

    Whole classes go to `encode_text` together, at most max(batch_size, len(templates)) texts a call.
    """
    if not classnames or not templates:
        raise ValueError("build_zeroshot_classifier needs at least one class name and one template")
    per_call = max(1, batch_size // len(templates))
    weights = []
    for start in range(0, len(classnames), per_call):
        names = classnames[start:start + per_call]
        texts = [render(t, name) for name in names for t in templates]
        embeddings = F.normalize(encode_text(texts).float(), dim=-1)  # [len(names) * T, D]
        weights.append(F.normalize(embeddings.reshape(len(names), len(templates), -1).mean(1), dim=-1))
    return torch.cat(weights).T.contiguous()
