"""Training-step throughput, side by side in one process: evaclip's engine step vs open_clip's own
step on the identical model, achieved FLOP/s vs the machine's measured GEMM peak, and the stage-1 step
(student + frozen teacher) vs its parts. Prints one JSON line.

`python scripts/bench_train_step.py [--batch 128] [--image-size 56] [--steps 8] [--threads 2]`
Loader excluded: batches are pre-built tensors. fp32 on CPU unless --precision bf16.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from itertools import cycle
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.config import load_config
from stage2_contrastive.config import Stage2Config


def timed(fn: Callable[[], Any], steps: int, warmup: int = 2) -> float:
    """Median seconds per call of `fn` after `warmup` calls."""
    return interleaved({"fn": fn}, steps, warmup)["fn"]


def interleaved(fns: dict[str, Callable[[], Any]], steps: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds so that allocator
    warm-up, caches and background load hit every candidate alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def gemm_peak(size: int = 2048, reps: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """Measured matmul FLOP/s of this machine (a large square GEMM)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / timed(lambda: a @ b, reps)


def batches(cfg: Stage2Config, n: int = 4) -> list[dict[str, torch.Tensor]]:
    size, bsz, ctx = cfg.data.image_size, cfg.train.batch_size, cfg.model.text.context_length
    gen = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(bsz, 3, size, size, generator=gen),
             "text": torch.randint(1, 49407, (bsz, ctx), generator=gen)} for _ in range(n)]


def prebuilt_stage2_task(cfg: Stage2Config, prebuilt: list[dict]) -> Any:
    """The real stage-2 task (needs the shards for class names) with its loader replaced by
    pre-built batches, so the engine step is timed without data loading."""
    from stage2_contrastive.task import ContrastiveTask
    task = ContrastiveTask(cfg)
    task.train_batches = lambda seed, rank, world_size: cycle(prebuilt)
    return task


def evaclip_step(cfg: Stage2Config, prebuilt: list[dict]) -> Callable[[], Any]:
    """One optimizer step of the real engine (accumulate, NaN guard, clipping, schedule, clamp)."""
    from common.engine import Trainer
    trainer = Trainer(prebuilt_stage2_task(cfg, prebuilt), cfg, cfg.train, cfg.optim)
    stream = trainer._batches()
    return lambda: trainer._train_step(stream)


def open_clip_step(cfg: Stage2Config, prebuilt: list[dict]) -> tuple[Callable[[], None], float]:
    """open_clip's training step (its model forward, ClipLoss/SigLipLoss, torch AdamW, logit clamp),
    and the FLOPs of one forward+backward."""
    import math

    from open_clip.loss import ClipLoss, SigLipLoss
    from stage2_contrastive.model import build_clip
    torch.manual_seed(0)
    model = build_clip(cfg.model, cfg.loss, cfg.data.image_size, cfg.train.batch_size).train()
    loss_fn = ClipLoss() if cfg.loss == "softmax" else SigLipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    data = cycle(prebuilt)

    def step() -> None:
        batch = next(data)
        loss = loss_fn(*model(batch["image"], batch["text"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    counter = FlopCounterMode(display=False)
    with counter:
        batch = prebuilt[0]
        loss_fn(*model(batch["image"], batch["text"])).backward()
    optimizer.zero_grad(set_to_none=True)
    return step, float(counter.get_total_flops())


def stage1_times(cfg: Stage2Config, steps: int) -> dict[str, float]:
    """Stage-1 step with a frozen teacher vs student fwd+bwd alone and teacher fwd alone (seconds)."""
    from common.vit import create_eva_trunk
    from stage1_mim.loss import masked_cosine_loss
    from stage1_mim.model import MaskedEvaStudent
    from stage1_mim.teacher import FrozenTeacher
    from stage2_contrastive.model import build_clip, build_tokenizer
    size, bsz = cfg.data.image_size, cfg.train.batch_size
    teacher = FrozenTeacher(build_clip(cfg.model, "softmax", size, bsz), build_tokenizer(cfg.model),
                            (size // 14, size // 14), ((0.5,) * 3, (0.5,) * 3))
    student = MaskedEvaStudent(create_eva_trunk(cfg.model.vision_model, size), teacher.embed_dim)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(bsz, 3, size, size)
    mask = torch.rand(bsz, (size // 14) ** 2) < 0.4
    targets = teacher.patch_targets(images)

    def student_step(with_teacher: bool) -> None:
        t = teacher.patch_targets(images) if with_teacher else targets
        loss = masked_cosine_loss(student(images, mask), t, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return interleaved({"stage1_step_s": lambda: student_step(True),
                        "student_step_s": lambda: student_step(False),
                        "teacher_fwd_s": lambda: teacher.patch_targets(images)}, steps)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/stage2/fmnist_tiny.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss", default="softmax")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(Stage2Config, args.config, [
            f"train.batch_size={args.batch}", f"data.image_size={args.image_size}", f"loss={args.loss}",
            f"train.output_dir={tmp}", "train.progress=false", "train.tensorboard=false"])
        prebuilt = batches(cfg)
        peak = gemm_peak()
        theirs_fn, flops = open_clip_step(cfg, prebuilt)
        timing = interleaved({"evaclip": evaclip_step(cfg, prebuilt), "open_clip": theirs_fn}, args.steps)
        ours, theirs = timing["evaclip"], timing["open_clip"]
        s1 = stage1_times(cfg, max(3, args.steps // 2))
    result = {
        "bench": "train_step", "device": "cpu", "threads": torch.get_num_threads(), "precision": "fp32",
        "model": f"{cfg.model.vision_model}@{args.image_size}px + text {cfg.model.text.layers}x{cfg.model.text.width}",
        "batch": args.batch, "loss": args.loss,
        "evaclip_images_per_s": round(args.batch / ours, 1), "open_clip_images_per_s": round(args.batch / theirs, 1),
        "vs_open_clip": round(theirs / ours, 3),
        "step_flops": flops, "achieved_flop_per_s": round(flops / ours), "gemm_peak_flop_per_s": round(peak),
        "flop_utilization": round(flops / ours / peak, 3),
        "stage1_images_per_s": round(args.batch / s1["stage1_step_s"], 1),
        "stage1_vs_parts": round(s1["stage1_step_s"] / (s1["student_step_s"] + s1["teacher_fwd_s"]), 3),
        **{k: round(v, 4) for k, v in s1.items()},
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
