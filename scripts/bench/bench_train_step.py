"""Training-step throughput, side by side in one process: evaclip's engine step vs open_clip's own
step on the identical model, achieved FLOP/s vs the machine's measured GEMM peak, and the stage-1 step
(student + frozen teacher) vs its parts. Prints one JSON line.

`python scripts/bench/bench_train_step.py [--batch 128] [--image-size 56] [--steps 6] [--threads 2]
[--compile none|model|blocks]`
Loader excluded: batches are pre-built tensors on the device. Defaults: fp32 on CPU; on a GPU
(`--device cuda --precision bf16 --config configs/stage2/gpu_base.yaml`, as scripts/gpu_check.sh runs it)
both steps run under bf16 autocast and the peak is a bf16 GEMM's.

`--compile MODE` (train.compile, common/train/compile.py) adds, in the same interleaved rounds: the
evaclip step compiled (`vs_open_clip`: against open_clip's eager step; `vs_open_clip_compiled`: against
open_clip's step with its model compiled the same way; `compiled_vs_eager`: against evaclip's eager step),
each compiled candidate's warm-up (seconds of its first 3 calls), `loss_diff_after_3_steps` (compiled vs
eager engine, same initial weights and batches) and the stage-1 step compiled (student and teacher)
vs eager (`stage1_compiled_vs_eager`). `evaclip_copy_share` (and `evaclip_compiled_copy_share`): the share
of a profiled step's time (GPU time on a GPU) in `aten::copy_`/`aten::_to_copy`, where autocast's
per-forward weight casts show up.
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

from common.config.schema import load_config
from common.train.compile import COMPILE_MODES, compile_in_place
from stage2_contrastive.config import Stage2Config


def sync() -> None:
    """Wait for queued GPU work, so wall-clock times cover it (no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # --clock


def interleaved(fns: dict[str, Callable[[], Any]], steps: int, clock: Callable[[], float] = time.perf_counter,
                warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, measured in alternating rounds so that allocator
    warm-up, caches and background load hit every candidate alike. Seconds of `clock`: wall time, or
    (--clock cpu) this process's CPU time, which other processes on a shared machine barely change."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            sync()
            start = clock()
            fn()
            sync()
            times[name].append(clock() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def gemm_probe(device: torch.device, dtype: torch.dtype) -> tuple[Callable[[], None], float]:
    """A call of large square GEMMs (8 × 2048² on CPU, 20 × 8192² on GPU) and its FLOPs: the machine's
    matmul peak, timed in the same interleaved rounds as the training steps, so it sees the same clock,
    load and statistic (on this VM a GEMM timed on its own swung 89–173 GFLOP/s between runs)."""
    size, count = (8192, 20) if device.type == "cuda" else (2048, 8)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))

    def gemms() -> None:
        for _ in range(count):
            a @ b
    return gemms, 2.0 * size**3 * count


def batches(cfg: Stage2Config, device: torch.device, n: int = 4) -> list[dict[str, torch.Tensor]]:
    size, bsz, ctx = cfg.data.image_size, cfg.train.batch_size, cfg.model.text.context_length
    gen = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(bsz, 3, size, size, generator=gen).to(device),
             "text": torch.randint(1, 49407, (bsz, ctx), generator=gen).to(device)} for _ in range(n)]


def autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prebuilt_stage2_task(cfg: Stage2Config, prebuilt: list[dict]) -> Callable[[Any], Any]:
    """A factory of the real stage-2 task (needs the shards for class names) with its loader replaced
    by pre-built batches, so the engine step is timed without data loading."""
    from stage2_contrastive.task import ContrastiveTask

    def make(run: Any) -> ContrastiveTask:
        task = ContrastiveTask(cfg, run)
        task.train_batches = lambda seed: cycle(prebuilt)
        return task
    return make


def evaclip_step(cfg: Stage2Config, prebuilt: list[dict], compile_mode: str = "none") -> Callable[[], torch.Tensor]:
    """One optimizer step of the real engine (accumulate, NaN guard, clipping, schedule, clamp) under
    `train.compile=compile_mode`; returns the step's mean loss (a device tensor)."""
    from dataclasses import replace

    from common.train.engine import Trainer
    cfg = replace(cfg, train=replace(cfg.train, compile=compile_mode))
    trainer = Trainer.build(cfg, prebuilt_stage2_task(cfg, prebuilt))
    stream = trainer.batches()
    return lambda: trainer.step(stream).loss


def warm_up(step: Callable[[], Any], calls: int = 3) -> float:
    """Seconds of the first `calls` calls of `step` (a compiled step compiles, and may recompile once)."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    sync()
    return time.perf_counter() - start


def open_clip_step(cfg: Stage2Config, prebuilt: list[dict], device: torch.device,
                   compile_mode: str = "none") -> tuple[Callable[[], None], float]:
    """open_clip's training step (its model forward, ClipLoss/SigLipLoss, torch AdamW, logit clamp),
    with its model compiled in place under `compile_mode`, and the FLOPs of one forward+backward."""
    import math

    from open_clip.loss import ClipLoss, SigLipLoss

    from stage2_contrastive.model import build_clip
    from stage2_contrastive.objective import Objective
    torch.manual_seed(0)
    objective = Objective.from_config(cfg.loss, cfg.model, cfg.train.batch_size)
    model = build_clip(cfg.model, objective, cfg.data.image_size).to(device).train()
    loss_fn = ClipLoss() if cfg.loss == "softmax" else SigLipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    data = cycle(prebuilt)
    flops = stage2_flops(model, loss_fn, prebuilt[0], device, cfg.train.precision)
    compile_in_place(model, compile_mode, what="open_clip model")

    def step() -> None:
        batch = next(data)
        with autocast(device, cfg.train.precision):
            loss = loss_fn(**model(batch["image"], batch["text"]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))

    return step, flops


def stage2_flops(model: torch.nn.Module, loss_fn: Any, batch: dict, device: torch.device, precision: str) -> float:
    """FLOPs of one eager forward+backward of `model` on `batch` (torch.utils.flop_counter)."""
    counter = FlopCounterMode(display=False)
    with counter, autocast(device, precision):
        loss_fn(**model(batch["image"], batch["text"])).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def stage1_step(cfg: Stage2Config, device: torch.device, compile_mode: str = "none") -> dict[str, Callable[[], None]]:
    """The stage-1 step with a frozen teacher (`stage1`), the student's fwd+bwd alone (`student`) and the
    teacher's forward alone (`teacher`), student and teacher compiled in place under `compile_mode`."""
    from common.vision.trunk import create_eva_trunk, patch_grid
    from stage1_mim.loss import masked_cosine_loss
    from stage1_mim.model import MaskedEvaStudent
    from stage1_mim.teacher import FrozenTeacher
    from stage2_contrastive.model import build_clip, build_tokenizer
    from stage2_contrastive.objective import Objective
    size, bsz = cfg.data.image_size, cfg.train.batch_size
    trunk = create_eva_trunk(cfg.model.vision_model, size)
    grid = patch_grid(cfg.model.vision_model, size)[0]
    teacher_clip = build_clip(cfg.model, Objective.from_config("softmax", cfg.model, bsz), size)
    teacher = FrozenTeacher(teacher_clip, build_tokenizer(cfg.model),
                            (grid, grid), ((0.5,) * 3, (0.5,) * 3)).to(device)
    student = MaskedEvaStudent(trunk, teacher.embed_dim).to(device)
    compile_in_place(student, compile_mode, what="stage-1 student")
    teacher.compile_image_path(compile_mode)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
    images = torch.randn(bsz, 3, size, size, device=device)
    mask = torch.rand(bsz, grid * grid, device=device) < 0.4
    with autocast(device, cfg.train.precision):
        targets = teacher.patch_targets(images)

    def student_step(with_teacher: bool) -> None:
        with autocast(device, cfg.train.precision):
            t = teacher.patch_targets(images) if with_teacher else targets
            loss = masked_cosine_loss(student(images, mask), t, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def teacher_forward() -> None:
        with autocast(device, cfg.train.precision):
            teacher.patch_targets(images)

    return {"stage1": lambda: student_step(True), "student": lambda: student_step(False),
            "teacher": teacher_forward}


def stage1_times(cfg: Stage2Config, steps: int, device: torch.device, compile_mode: str,
                 clock: Callable[[], float]) -> dict[str, float]:
    """Seconds per stage-1 step with a frozen teacher, per student fwd+bwd alone and per teacher forward
    alone (eager); with `compile_mode`, also the compiled stage-1 step and its warm-up."""
    eager = stage1_step(cfg, device)
    fns = {"stage1_step_s": eager["stage1"], "student_step_s": eager["student"], "teacher_fwd_s": eager["teacher"]}
    warm = {}
    if compile_mode != "none":
        fns["stage1_compiled_step_s"] = stage1_step(cfg, device, compile_mode)["stage1"]
        warm["stage1_warmup_s"] = warm_up(fns["stage1_compiled_step_s"])
    return {**interleaved(fns, steps, clock), **warm}


def compiled_checks(compiled: Callable[[], torch.Tensor], eager: Callable[[], torch.Tensor]) -> dict[str, Any]:
    """Warm-up of the compiled engine step (seconds of its first 3 calls, where it compiles) and
    |loss compiled − loss eager| at step 3: both engines start from the same seed and batches, and neither
    has stepped yet."""
    warm, losses = 0.0, []
    for _ in range(3):
        sync()
        start = time.perf_counter()
        loss = compiled()
        sync()
        warm += time.perf_counter() - start
        losses.append((loss, eager()))
    return {"evaclip_warmup_s": round(warm, 1),
            "loss_diff_after_3_steps": float((losses[-1][0] - losses[-1][1]).abs())}


def step_figures(timing: dict[str, float], batch: int, flops: float, gemm_flops: float) -> dict[str, Any]:
    """images/s of each candidate, the ratios between them and the FLOP utilisation (MFU) of evaclip's
    step (its compiled step when there is one) against the GEMM peak of the same rounds."""
    ours, theirs, peak = timing["evaclip"], timing["open_clip"], gemm_flops / timing["gemm"]
    out: dict[str, Any] = {"evaclip_images_per_s": round(batch / ours, 1),
                           "open_clip_images_per_s": round(batch / theirs, 1),
                           "vs_open_clip": round(theirs / ours, 3)}
    if "evaclip_compiled" in timing:
        best = timing["evaclip_compiled"]
        out.update({"evaclip_compiled_images_per_s": round(batch / best, 1),
                    "open_clip_compiled_images_per_s": round(batch / timing["open_clip_compiled"], 1),
                    "vs_open_clip_eager": round(theirs / best, 3),
                    "vs_open_clip_compiled": round(timing["open_clip_compiled"] / best, 3),
                    "compiled_vs_eager": round(ours / best, 3),
                    "eager_flop_utilization": round(flops / ours / peak, 3)})
        ours = best
    out.update({"step_flops": flops, "achieved_flop_per_s": round(flops / ours), "gemm_peak_flop_per_s": round(peak),
                "flop_utilization": round(flops / ours / peak, 3)})
    return out


def stage1_figures(s1: dict[str, float], batch: int) -> dict[str, Any]:
    out = {"stage1_images_per_s": round(batch / s1["stage1_step_s"], 1),
           "stage1_vs_parts": round(s1["stage1_step_s"] / (s1["student_step_s"] + s1["teacher_fwd_s"]), 3),
           **{k: round(v, 4) for k, v in s1.items()}}
    if "stage1_compiled_step_s" in s1:
        out["stage1_compiled_vs_eager"] = round(s1["stage1_step_s"] / s1["stage1_compiled_step_s"], 3)
    return out


COPY_OPS = ("aten::copy_", "aten::_to_copy")  # dtype casts (autocast's weight casts among them) and copies


def profile_step(step: Callable[[], Any], rows: int = 0) -> float:
    """Profile 2 calls of `step`: the share of self time (CUDA time on a GPU) spent in COPY_OPS, and, if
    `rows`, the top `rows` ops by that time printed to stderr."""
    import sys

    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        step()
        sync()
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events)
    if rows:
        print(events.table(sort_by=key, row_limit=rows), file=sys.stderr)
    return round(sum(getattr(e, key) for e in events if e.key in COPY_OPS) / max(total, 1e-9), 3)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/stage2/fmnist_tiny.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None, help="default: the config's data.image_size")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--loss", default="softmax")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--clock", default="wall", choices=list(CLOCKS),
                        help="cpu: time the interleaved rounds in process CPU seconds (a loaded CPU machine)")
    parser.add_argument("--compile", default="none", choices=COMPILE_MODES,
                        help="also time the steps compiled this way (train.compile), beside the eager ones")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print (stderr) the N most expensive ops of 2 evaclip steps (torch.profiler)")
    # evaclip_copy_share (always): the share of 2 profiled steps' time in dtype casts and copies
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine — use --device cpu")
    with tempfile.TemporaryDirectory() as tmp:
        size = [f"data.image_size={args.image_size}"] if args.image_size else []
        cfg = load_config(Stage2Config, args.config, [
            f"train.batch_size={args.batch}", *size, f"loss={args.loss}", f"train.precision={args.precision}",
            f"train.output_dir={tmp}", "train.progress=false", "train.tensorboard=false"])
        prebuilt = batches(cfg, device)
        gemm_fn, gemm_flops = gemm_probe(device, torch.bfloat16 if args.precision == "bf16" else torch.float32)
        theirs_fn, flops = open_clip_step(cfg, prebuilt, device)
        ours_fn = evaclip_step(cfg, prebuilt)
        fns = {"evaclip": ours_fn, "open_clip": theirs_fn, "gemm": gemm_fn}
        extra: dict[str, Any] = {}
        if args.compile != "none":
            fns["evaclip_compiled"] = evaclip_step(cfg, prebuilt, args.compile)
            extra = compiled_checks(fns["evaclip_compiled"], ours_fn)
            fns["open_clip_compiled"] = open_clip_step(cfg, prebuilt, device, args.compile)[0]
            extra["open_clip_warmup_s"] = round(warm_up(fns["open_clip_compiled"]), 1)
        timing = interleaved(fns, args.steps, CLOCKS[args.clock])
        extra["evaclip_copy_share"] = profile_step(ours_fn, args.profile)
        if "evaclip_compiled" in fns:
            extra["evaclip_compiled_copy_share"] = profile_step(fns["evaclip_compiled"], args.profile)
        s1 = stage1_times(cfg, max(3, args.steps // 2), device, args.compile, CLOCKS[args.clock])
    result = {
        "bench": "train_step", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "precision": args.precision, "compile": args.compile,
        "clock": args.clock,
        "model": f"{cfg.model.vision_model}@{cfg.data.image_size}px + text "
                 f"{cfg.model.text.layers}x{cfg.model.text.width}",
        "batch": args.batch, "loss": args.loss,
        **step_figures(timing, args.batch, flops, gemm_flops),
        **extra,
        **stage1_figures(s1, args.batch),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
