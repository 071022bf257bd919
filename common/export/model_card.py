"""The export's model card: `README.md` in open_clip's model-card layout (its own `generate_readme`: the
YAML header with `library_name: open_clip` and the license, details, usage), then the results of the run's
evaluations and the training recipe with the resolved config of each stage; the same configs as JSON in
`training_config.json`. Everything comes from the run folders (`common.export.run_summary.RunSummary`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from common.artifacts import EvalRecord
from common.export.run_summary import RunSummary
from common.export.towers import RELOCATE_COMMAND, path_named_towers
from common.weights.formats import ClipConfig

MODEL_CARD_FILE = "README.md"
TRAINING_CONFIG_FILE = "training_config.json"
OBJECTIVES = {"softmax": "softmax (CLIP InfoNCE, learnable temperature)",
              "sigmoid": "sigmoid (SigLIP, learnable temperature and bias)"}


@dataclass
class CardFacts:
    """What the card says: the exported config, the stage-2 run and the step of the exported weights
    (None: unknown), the stage-1 run `--init` used (None: the trunk was trained from scratch in stage 2),
    the license id and the hub repo (None: local)."""
    clip: ClipConfig
    stage2: RunSummary
    weights_step: Optional[int]
    stage1: Optional[RunSummary]
    license_id: str
    hub_id: Optional[str]


def run_line(run: RunSummary) -> str:
    """'run `FOLDER`: N steps × S samples per step (…), precision', the batch figures as the run recorded them."""
    if run.train is None:
        return f"run `{run.folder}` (its config.yaml was not found at export)"
    t = run.train
    steps = run.last_step if run.last_step is not None else t.steps
    b = run.batch
    if b is None:
        return (f"run `{run.folder}`: {steps} steps, {t.batch_size} per process × contrastive_accum "
                f"{t.contrastive_accum} × grad_accum {t.grad_accum} (its process count was not logged), {t.precision}")
    return (f"run `{run.folder}`: {steps} steps × {b['samples_per_step']} samples per step (contrastive batch "
            f"{b['contrastive_batch']} = {b['micro_batch']} per process × contrastive_accum {b['contrastive_accum']} "
            f"× {b['world_size']} processes; × grad_accum {b['grad_accum']}), {t.precision}")


def text_tower_line(text_cfg: dict[str, Any]) -> str:
    if "hf_model_name" in text_cfg:
        return (f"Hugging Face encoder (its config: config.json), {text_cfg.get('hf_pooler_type')}, "
                f"{text_cfg.get('hf_proj_type')} projection; its own tokenizer, context {text_cfg['context_length']}")
    return (f"open_clip transformer, {text_cfg['layers']} layers × width {text_cfg['width']}, "
            f"{text_cfg['heads']} heads, context {text_cfg['context_length']}; CLIP BPE tokenizer")


def card_dict(f: CardFacts) -> dict[str, Any]:
    """The `model_card` dict open_clip's `generate_readme` renders."""
    info, model_cfg = f.clip.info, f.clip.model_cfg
    name = model_cfg["vision_cfg"]["timm_model_name"]
    loads_as = f", built by open_clip as `{name}`" if name != info.vision_model and ":" not in name else ""
    stage1 = (f"masked image modeling against a frozen CLIP teacher, {run_line(f.stage1)}; `--init` loaded "
              f"`{info.init_from}`") if f.stage1 else "none: the vision trunk was trained from scratch in stage 2"
    data = f.stage2.data
    details = {
        "Model Type": "contrastive image-text (open_clip CustomTextCLIP), zero-shot image classification",
        "Vision tower": f"timm `{info.vision_model}` at {info.image_size} px{loads_as}",
        "Text tower": text_tower_line(model_cfg["text_cfg"]),
        "Embedding dim": model_cfg["embed_dim"],
        "Objective": OBJECTIVES.get(info.loss, info.loss),
        "Stage 1": stage1,
        "Stage 2": f"contrastive training, {run_line(f.stage2)}",
        "Training data": f"`{data.train_shards}` (webdataset shards)" if data else "unknown",
        "Evaluation data": f"`{data.eval_shards}`" if data else "unknown",
    }
    return {"tags": ["clip", "evaclip", "eva02", "zero-shot-image-classification"], "license": f.license_id,
            "description": description(f), "details": details, "usage": usage(f)}


def description(f: CardFacts) -> str:
    first = ("stage 1, masked image modeling: an EVA-02 ViT learns to predict a frozen CLIP teacher's patch "
             "features under block masks; stage 2, contrastive image-text training with the vision trunk "
             "initialised from stage 1" if f.stage1 else
             "stage 2 only, contrastive image-text training of a randomly initialised EVA-02 ViT (no stage 1)")
    return f"An EVA-CLIP style model trained with evaclip's two-stage recipe — {first}."


def usage(f: CardFacts) -> str:
    where = f"hf-hub:{f.hub_id}" if f.hub_id else "local-dir:/path/to/this/folder"
    text = ("```python\nimport open_clip, torch\n"
            f"model, _, preprocess = open_clip.create_model_and_transforms(\"{where}\")\n"
            f"tokenizer = open_clip.get_tokenizer(\"{where}\")\n"
            "with torch.no_grad():\n"
            "    image_features = model.encode_image(preprocess(image)[None], normalize=True)\n"
            "    text_features = model.encode_text(tokenizer([\"a photo of a sneaker.\"]), normalize=True)\n"
            "```\nNeeds `open_clip_torch==3.3.*`, `timm` and `transformers`; no network, not evaclip.\n")
    if path_named_towers(f.clip.model_cfg) and not f.hub_id:
        text += (f"\nThis folder names its tower config by absolute path (open_clip 3.3 resolves no path inside "
                 f"the folder). After copying or moving it, run `python {RELOCATE_COMMAND} NEW_FOLDER` "
                 f"(evaclip); before publishing it as ORG/NAME, `python {RELOCATE_COMMAND} FOLDER --hub-id "
                 f"ORG/NAME`.\n")
    return text


def eval_table(evals: list[EvalRecord]) -> str:
    """A markdown table: one row per evaluation (step, then each metric, 4 decimals)."""
    keys = list(dict.fromkeys(k for e in evals for k in e.metrics))
    rows = [f"| step | {' | '.join(keys)} |", "|---" * (len(keys) + 1) + "|"]
    for e in evals:
        cells = [f"{e.metrics[k]:.4f}" if isinstance(e.metrics.get(k), float) else str(e.metrics.get(k, ""))
                 for k in keys]
        rows.append(f"| {e.step} | {' | '.join(cells)} |")
    return "\n".join(rows) + "\n"


def results_section(f: CardFacts) -> str:
    text = "\n## Results\n"
    data = f.stage2.data
    if f.stage2.evals:
        split = f"`{data.eval_shards}`" if data else "the eval split"
        limit = (f"the first {data.final_eval_max_samples} samples" if data and data.final_eval_max_samples
                 else "all of it")
        exported = (f"the exported weights are step {f.weights_step}'s" if f.weights_step is not None
                    else "the step of the exported weights is unknown")
        text += (f"\nStage 2 on {split}: zero-shot top-1/top-5 and image↔text retrieval recall, fractions in "
                 f"[0, 1], one row per evaluation ({exported}; the final evaluation uses {limit}).\n\n"
                 + eval_table(f.stage2.evals))
    else:
        text += "\nThe stage-2 run logged no evaluation.\n"
    if f.stage1 and f.stage1.evals:
        text += "\nStage 1 (the label-free probe of the student):\n\n" + eval_table(f.stage1.evals)
    return text


def recipe_section(f: CardFacts) -> str:
    text = f"\n## Training recipe\n\nThe resolved configs as written by each run (also in `{TRAINING_CONFIG_FILE}`).\n"
    for title, run in (("Stage 1", f.stage1), ("Stage 2", f.stage2)):
        if run is None:
            continue
        if run.config is None:
            text += f"\n### {title}\n\n{run_line(run)}\n"
            continue
        text += f"\n### {title}: `{run.folder}`\n\n```yaml\n{yaml.safe_dump(run.config, sort_keys=False)}```\n"
    return text


def write_model_card(out: Path, f: CardFacts) -> None:
    """OUT/README.md and OUT/training_config.json."""
    from open_clip.push_to_hf_hub import generate_readme
    name = f.hub_id or out.name
    card = generate_readme(card_dict(f), name) + results_section(f) + recipe_section(f)
    (out / MODEL_CARD_FILE).write_text(card)
    configs = {"stage2": f.stage2.config, "stage1": f.stage1.config if f.stage1 else None,
               "init_from": f.clip.info.init_from}
    (out / TRAINING_CONFIG_FILE).write_text(json.dumps(configs, indent=2))
