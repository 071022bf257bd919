"""CPU seconds per training step of the stage-1 choices (image size = patch grid, mask ratio) and of the
stage-2 step at the same sizes, measured side by side: one process, interleaved rounds, median of this
process's CPU time per step (`bench_train_step.interleaved` with `--clock cpu`), batches pre-built.

    python scripts/bench_regime_cost.py [--sizes 56 84 112] [--ratios 0.4 0.6] [--steps 4] [--threads 1]

The stage-1 step is the real one: the student (eva02_tiny_patch14 at SIZE: a (SIZE/14)² grid) forward +
backward + AdamW, and the frozen teacher's targets; the teacher is the `fmnist_tiny` CLIP at ITS own size
(56 px, `--teacher-size`), fed the student's crop resized, as stage 1 runs it. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
from typing import Callable

import numpy as np
import torch
from bench_train_step import CLOCKS, batches, evaclip_step, interleaved  # scripts/ is on sys.path

from common.config.schema import load_config
from stage2_contrastive.config import Stage2Config

CONFIG = "configs/stage2/fmnist_tiny.yaml"


def stage1_step(size: int, ratio: float, teacher_size: int, batch: int) -> Callable[[], None]:
    """One stage-1 step (targets + student fwd/bwd + AdamW) at student `size`, block masks of `ratio`."""
    from common.vision.trunk import create_eva_trunk, patch_grid
    from stage1_mim.config import MaskConfig
    from stage1_mim.loss import masked_cosine_loss
    from stage1_mim.model import MaskedEvaStudent
    from stage1_mim.teacher import FrozenTeacher
    from stage2_contrastive.model import build_clip, build_tokenizer
    from stage2_contrastive.objective import Objective
    cfg = load_config(Stage2Config, CONFIG, [f"data.image_size={teacher_size}"])
    grid = patch_grid(cfg.model.vision_model, size)
    clip = build_clip(cfg.model, Objective.from_config("softmax", cfg.model, batch), teacher_size)
    teacher = FrozenTeacher(clip, build_tokenizer(cfg.model), grid, ((0.5,) * 3, (0.5,) * 3))
    student = MaskedEvaStudent(create_eva_trunk(cfg.model.vision_model, size), teacher.embed_dim)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-4)
    masker, rng = MaskConfig(ratio=ratio, min_block=2).generator(grid), np.random.default_rng(0)
    images = torch.randn(batch, 3, size, size)
    mask = torch.from_numpy(np.stack([masker(rng).reshape(-1) for _ in range(batch)]))

    def step() -> None:
        loss = masked_cosine_loss(student(images, mask), teacher.patch_targets(images), mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def stage2_step(size: int) -> Callable[[], object]:
    """The engine's stage-2 step of `fmnist_tiny` at `size` (needs the Fashion-MNIST shards for class names)."""
    cfg = load_config(Stage2Config, CONFIG, [f"data.image_size={size}", "train.output_dir=/tmp/bench_regime_cost",
                                             "train.tensorboard=false", "train.progress=false"])
    return evaclip_step(cfg, batches(cfg, torch.device("cpu")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 84, 112])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.4, 0.6])
    parser.add_argument("--teacher-size", type=int, default=56)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fns: dict[str, Callable[[], object]] = {}
    for size in args.sizes:
        for ratio in args.ratios:
            fns[f"stage1_{size}px_ratio{ratio}"] = stage1_step(size, ratio, args.teacher_size, args.batch)
        fns[f"stage2_{size}px"] = stage2_step(size)
    seconds = interleaved(fns, args.steps, CLOCKS["cpu"], warmup=1)
    print(json.dumps({"cpu_s_per_step": {k: round(v, 3) for k, v in seconds.items()}, "batch": args.batch,
                      "threads": args.threads, "teacher_size": args.teacher_size, "steps": args.steps}))


if __name__ == "__main__":
    main()
