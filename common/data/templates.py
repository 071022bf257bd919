"""ONE prompt-template module: template sets (open_clip's bundled ImageNet prompts, not retyped) or a
template file, captions synthesised from class labels (stage-2 data), and the zero-shot classifier
(stage-1 probe, stage-2 eval) fed by any text encoder. Config keys: `data.templates`,
`eval.zeroshot[i].templates`.

A template file holds one template a line with `{c}` (clip_benchmark's
`zeroshot_classification_templates.txt`) or `{}` where the class name goes."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from common.config.sections import TemplateSetName

Template = Union[Callable[[str], str], str]  # a callable, or a format string with `{}` or `{c}`
TEMPLATE_SETS: dict[TemplateSetName, Sequence[Template]] = {  # names: the config's `TemplateSetName`
    "openai_imagenet": OPENAI_IMAGENET_TEMPLATES,  # the 80 CLIP ImageNet prompts
    "openai": OPENAI_IMAGENET_TEMPLATES,
    "simple_imagenet": SIMPLE_IMAGENET_TEMPLATES,  # CLIP's 7-prompt subset
    "simple": SIMPLE_IMAGENET_TEMPLATES,
    "short": ("a photo of a {}.",),       # one plain prompt
}


def get_templates(name: str) -> Sequence[Template]:
    if name not in TEMPLATE_SETS:
        raise ValueError(f"unknown template set '{name}' — use one of {', '.join(TEMPLATE_SETS)} "
                         "(config key: data.templates)")
    return TEMPLATE_SETS[name]


def read_template_file(path: str | Path) -> list[str]:
    """The templates of a file, one a line (blank lines ignored); ValueError for a line without `{c}`/`{}`."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"template file {path} holds no template — write one a line, e.g. 'a photo of a {{c}}.'")
    for number, line in enumerate(lines, 1):
        if "{c}" not in line and "{}" not in line:
            raise ValueError(f"template file {path}, template {number} {line!r} has no {{c}} for the class name")
    return lines


def load_templates(spec: str) -> Sequence[Template]:
    """A template set by name (`TEMPLATE_SETS`) or the templates of a file (`read_template_file`)."""
    return TEMPLATE_SETS[spec] if spec in TEMPLATE_SETS else read_template_file(spec)


def as_text(template: Template) -> str:
    """A template as a line of a template file (`{c}` where the class name goes)."""
    return render(template, "{c}")


def render(template: Template, classname: str) -> str:
    if isinstance(template, str):
        return template.replace("{c}", "{}").format(classname)
    return template(classname)


def caption_of(meta: dict[str, Any], classnames: Sequence[str] | None, templates: Sequence[Template],
               index: int | None = None) -> str:
    """A sample's own caption, else one synthesised from its label `cls`. With `index` (eval) the result
    is deterministic: the first caption, or template `index`. Without (training), a sample with several
    captions (`meta["captions"]`) gets one of them and a label a random template, drawn from torch's
    RNG (seeded per loader worker, so the stream stays reproducible)."""
    captions = meta.get("captions") or ([meta["txt"]] if meta.get("txt") else [])
    if captions:
        return captions[0] if index is not None or len(captions) == 1 else \
            captions[int(torch.randint(len(captions), ()))]
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
