"""Did stage 1 learn anything the image decides? Compares the stage-1 student with an IMAGE-BLIND predictor.

`python scripts/stage1_check.py RUNS/stage1 [--max-samples 1000]` reads the run's resolved config (teacher,
mask, data) and its last checkpoint, and prints one JSON line, all on the eval split with a fixed mask seed:

- `masked_cos`: mean cosine between the student's predictions and the teacher's targets at masked tokens
  (1 − the stage-1 loss there);
- `image_blind_cos`: the same for the best predictor that never looks at the image: the per-position mean
  of the normalised teacher targets over the train split. `gain = masked_cos − image_blind_cos` is what
  stage 1 learned about the images; near 0, the student learned the teacher's position-dependent average
  and its trunk is no better a start for stage 2 than a random one (docs/results.md);
- `visible_cos`: the cosine at tokens left visible (the loss never sees them: the stage-1 zero-shot probe
  reads these, so a probe at chance with a large `gain` is no failure);
- `teacher_token_probe_top1`: the stage-1 probe applied to the teacher's own targets (the probe's ceiling).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.artifacts import complete_checkpoints, read_config
from common.data.run_data import RunData
from common.data.streams import make_eval_loader
from common.data.templates import build_zeroshot_classifier, get_templates
from common.data.transforms import eval_transform
from common.vision.trunk import patch_grid
from common.weights.safe_load import load_weights
from stage1_mim.config import Stage1Config
from stage1_mim.model import MaskedEvaStudent
from stage1_mim.task import student_trunk
from stage1_mim.teacher import FrozenTeacher, build_teacher

MASK_SEED = 0


def image_blind_cos(position_mean: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine at the masked tokens between `targets [B, N, D]` and the per-position mean direction
    `position_mean [N, D]` (an image-blind prediction); `mask [B, N]` bool."""
    cos = (F.normalize(targets, dim=-1) * F.normalize(position_mean, dim=-1)).sum(-1)
    return cos[mask].mean()


def position_mean(teacher: FrozenTeacher, batches) -> torch.Tensor:
    """`[N, D]`: the mean of the normalised teacher targets over `batches` (the train split, eval transform)."""
    total, count = None, 0
    for batch in batches:
        targets = F.normalize(teacher.patch_targets(batch["image"]), dim=-1)
        total = targets.sum(0) if total is None else total + targets.sum(0)
        count += targets.shape[0]
    return total / max(count, 1)


def check(run_dir: Path, max_samples: int) -> dict[str, float]:
    cfg: Stage1Config = read_config(run_dir, Stage1Config)
    d, m = cfg.data, cfg.mask
    grid = patch_grid(cfg.student.vision_model, d.image_size)
    teacher = build_teacher(cfg.teacher.model, cfg.teacher.weights, grid, (d.augment.mean, d.augment.std))
    student = MaskedEvaStudent(student_trunk(cfg), teacher.embed_dim)  # the trunk the run trained
    student.load_state_dict(load_weights(complete_checkpoints(run_dir)[-1] / "model.safetensors"))
    student.eval()
    transform = eval_transform(d.image_size, d.augment)
    data = RunData(d, cfg.eval, 0, 1, d.eval_batch_size)

    def sample(image, meta):
        return {"image": transform(image), "label": meta.get("cls", -1)}

    masker = m.generator(grid)
    rng = np.random.default_rng(MASK_SEED)
    sums = {"masked_cos": 0.0, "image_blind_cos": 0.0, "visible_cos": 0.0, "teacher_token_probe_top1": 0.0}
    seen = 0
    with torch.no_grad():
        train_urls = [url for source in data.sources for url in source.urls]
        train = make_eval_loader(train_urls, sample, d.eval_batch_size, max_samples=max_samples, num_workers=0)
        mean = position_mean(teacher, train)
        classifier = (build_zeroshot_classifier(teacher.encode_text, data.classnames, get_templates(d.templates))
                      if data.classnames else None)
        for batch in data.eval_batches(sample, final=False):
            images, n = batch["image"], batch["image"].shape[0]
            targets = F.normalize(teacher.patch_targets(images), dim=-1)
            mask = torch.from_numpy(np.stack([masker(rng).reshape(-1) for _ in range(n)]))
            predicted = F.normalize(student(images, mask), dim=-1)
            sums["masked_cos"] += (predicted * targets).sum(-1)[mask].mean().item() * n
            sums["image_blind_cos"] += image_blind_cos(mean, targets, mask).item() * n
            sums["visible_cos"] += (F.normalize(student(images, None), dim=-1) * targets).sum(-1).mean().item() * n
            if classifier is not None:
                pooled = F.normalize(targets.mean(1), dim=-1)
                sums["teacher_token_probe_top1"] += (pooled @ classifier).argmax(-1).eq(batch["label"]).sum().item()
            seen += n
    out = {k: round(v / max(seen, 1), 4) for k, v in sums.items()}
    out["gain"] = round(out["masked_cos"] - out["image_blind_cos"], 4)
    return dict(out, n=seen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a stage-1 run folder")
    parser.add_argument("--max-samples", type=int, default=1000, help="train images for the image-blind mean")
    args = parser.parse_args(argv)
    if not complete_checkpoints(args.run):
        print(f"error: no complete checkpoint in {args.run} — pass a finished stage-1 run folder", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    print(json.dumps(check(args.run, args.max_samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
