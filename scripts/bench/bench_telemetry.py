"""What telemetry costs (`train.telemetry`: data-wait timing of every batch, the FLOP count of the first
step, the speed fields of every loss record), side by side in one process: the whole `Trainer.fit` of the
stage-2 engine on pre-built batches, telemetry on vs off, logging every step (the worst case), in
alternating rounds. Prints one JSON line: whole-fit seconds (they include the one-time FLOP count, an extra
forward and backward under torch's counter) and the steady per-step speed (the median of every record's
samples/s after the first step, as the engine measured it between two records).

`python scripts/bench/bench_telemetry.py [--steps 40] [--rounds 3] [--batch 32] [--image-size 28] [--threads 2]`
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from dataclasses import replace

import torch
from bench_train_step import batches, prebuilt_stage2_task  # scripts/bench/ is on sys.path as a script

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.train.engine import Trainer
from stage2_contrastive.config import Stage2Config


def timed_fit(cfg: Stage2Config, prebuilt: list[dict], telemetry: bool, out: str) -> tuple[float, float]:
    """(seconds of the whole `fit` (its steps, records and final checkpoint), median samples/s of its records
    after step 1) with `train.telemetry=telemetry`."""
    cfg = replace(cfg, train=replace(cfg.train, telemetry=telemetry, output_dir=out))
    trainer = Trainer.build(cfg, prebuilt_stage2_task(cfg, prebuilt))
    try:
        start = time.perf_counter()
        trainer.fit()
        seconds = time.perf_counter() - start
    finally:
        trainer.close()
    speeds = [r["samples_per_s"] for r in read_metrics(out) if "loss" in r and r["step"] > 1]
    return seconds, statistics.median(speeds)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/stage2/fmnist_tiny.yaml")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(Stage2Config, a.config, [
        f"train.steps={a.steps}", f"train.batch_size={a.batch}", f"data.image_size={a.image_size}",
        "train.log_every=1", "train.save_every=0", "train.progress=false", "train.tensorboard=false",
        "data.eval_shards=", "data.num_workers=0"])
    prebuilt = batches(cfg, torch.device("cpu"))
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    speed: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for mode in ("on", "off") if r % 2 == 0 else ("off", "on"):
                fit_s, samples_per_s = timed_fit(cfg, prebuilt, mode == "on", f"{tmp}/{mode}{r}")
                seconds[mode].append(fit_s)
                speed[mode].append(samples_per_s)
    median = {mode: statistics.median(s) for mode, s in seconds.items()}
    steady = {mode: statistics.median(s) for mode, s in speed.items()}
    print(json.dumps({
        "bench": "telemetry", "machine": platform.processor() or platform.machine(), "threads": a.threads,
        "steps": a.steps, "rounds": a.rounds, "batch": a.batch, "image_size": a.image_size,
        "fit_seconds_on": seconds["on"], "fit_seconds_off": seconds["off"],
        "steps_per_s_on": a.steps / median["on"], "steps_per_s_off": a.steps / median["off"],
        "overhead": median["on"] / median["off"] - 1.0,
        "steady_samples_per_s_on": steady["on"], "steady_samples_per_s_off": steady["off"],
        "steady_overhead": steady["off"] / steady["on"] - 1.0}))


if __name__ == "__main__":
    main()
