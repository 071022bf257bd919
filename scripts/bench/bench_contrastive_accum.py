"""Contrastive accumulation (`train.contrastive_accum` K) at an equal contrastive batch B: peak memory and
images/s of K = 1, 2, 4 (micro-batch B / K), through the real engine step (stage-2 task, pre-built batches,
no data loading). Prints one JSON line.

`python scripts/bench/bench_contrastive_accum.py [--batch 64] [--accum 1 2 4] [--image-size 56] [--steps 3]
[--rounds 2] [--device cpu|cuda] [--precision fp32|bf16] [--config configs/stage2/fmnist_tiny.yaml]`

Each (K, round) runs in its own process, so its peak memory is its own: on a GPU the allocator's peak
(`torch.cuda.max_memory_allocated`), on a CPU the process's peak resident set (`ru_maxrss`) minus its
resident set before the first step (the steps' activations, gradients and optimizer state; Linux /proc).
Rounds alternate the candidates (K = 1, 2, 4, 1, 2, 4, …), so background load hits each alike; images/s is
the median over rounds, memory the maximum. The class names the task needs come from `--shards DIR`
(train/ and test/ shards with classnames.txt, e.g. data/gpu_check), or else from a 64-image Fashion-MNIST
shard written to a temporary folder (`common.datasets`).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

ROOT = Path(__file__).resolve().parents[2]


def child(args: argparse.Namespace) -> dict:
    """One candidate in this process: `args.steps` timed engine steps after one warm-up step."""
    sys.path.insert(0, str(ROOT))
    from itertools import cycle

    from common.config.schema import load_config
    from common.train.engine import Trainer
    from stage2_contrastive.config import Stage2Config
    from stage2_contrastive.task import ContrastiveTask
    torch.set_num_threads(args.threads)
    micro = args.batch // args.child
    cfg = load_config(Stage2Config, str(ROOT / args.config), [
        f"data.train_shards={args.shards}/train", "data.eval_shards=", f"train.batch_size={micro}",
        f"train.contrastive_accum={args.child}", f"train.output_dir={args.out}", "train.progress=false",
        "train.tensorboard=false", f"train.precision={args.precision}",
        *([f"data.image_size={args.image_size}"] if args.image_size else [])])
    size, ctx = cfg.data.image_size, cfg.model.text.context_length
    gen = torch.Generator().manual_seed(0)
    prebuilt = [{"image": torch.randn(micro, 3, size, size, generator=gen),
                 "text": torch.randint(1, 49407, (micro, ctx), generator=gen)} for _ in range(args.child)]

    def make(run):
        task = ContrastiveTask(cfg, run)
        task.train_batches = lambda seed: cycle(prebuilt)
        return task
    trainer = Trainer.build(cfg, make)
    stream = trainer.batches()
    cuda = trainer.context.device.type == "cuda"
    rss_before = resident_bytes()
    trainer.step(stream)  # warm-up: allocator, optimizer state
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.step(stream)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() if cuda else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before)
    return {"images_per_s": args.steps * args.batch / seconds, "peak_mib": peak / 2**20}


def resident_bytes() -> int:
    """This process's resident set now (Linux: /proc/self/statm, in pages)."""
    import os
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_candidate(args: argparse.Namespace, accum: int, shards: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", str(accum), "--shards", str(shards), "--out", str(out),
           "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
           "--precision", args.precision, "--config", args.config, "--device", args.device]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"K={accum} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/stage2/fmnist_tiny.yaml")
    parser.add_argument("--batch", type=int, default=64, help="the contrastive batch B (per process)")
    parser.add_argument("--accum", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--shards", default="", help="existing shards (train/, classnames.txt); default: "
                        "64 Fashion-MNIST images in a temporary folder")
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch.cuda.is_available() is False on this machine — use --device cpu")
    bad = [k for k in args.accum if args.batch % k]
    if bad:
        raise SystemExit(f"--batch {args.batch} is not divisible by --accum {bad}")
    sys.path.insert(0, str(ROOT))
    from common.datasets.shard_writer import ShardOptions, make_shards
    results: dict[int, list[dict]] = {k: [] for k in args.accum}
    with tempfile.TemporaryDirectory() as tmp:
        shards = Path(args.shards) if args.shards else Path(tmp) / "shards"
        if not args.shards:
            make_shards(ShardOptions(source="fashion-mnist", out=str(shards), samples_per_shard=64,
                                     max_train=64, max_test=64, seed=0))
        for round_ in range(args.rounds):
            for accum in args.accum:
                results[accum].append(run_candidate(args, accum, shards, Path(tmp) / f"run{round_}_{accum}"))
    print(json.dumps({
        "bench": "contrastive_accum", "device": args.device, "precision": args.precision,
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "config": args.config,
        "contrastive_batch": args.batch, "image_size": args.image_size, "steps": args.steps, "rounds": args.rounds,
        "results": {f"K={k}": {"micro_batch": args.batch // k,
                               "images_per_s": round(median(r["images_per_s"] for r in rs), 2),
                               "peak_mib": round(max(r["peak_mib"] for r in rs), 1)} for k, rs in results.items()},
    }))


if __name__ == "__main__":
    main()
