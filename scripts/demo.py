"""The end-to-end demo on Fashion-MNIST, one named step after another (a failure names its step).

data → teacher (stage 2 from scratch, short) → export → stage 1 MIM with that teacher →
stage 2 --init from stage 1, and the scratch control with the same steps, batch and seeds (plus the
sigmoid loss for the --init run) → export → zero-shot of the export through open_clip → report.
`python scripts/demo.py [--quick]`; `scripts/demo.sh` sets up the venv first. `--quick` shrinks every
step (the end-to-end test runs it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE1_CFG, STAGE2_CFG = "configs/stage1/fmnist_tiny.yaml", "configs/stage2/fmnist_tiny.yaml"


@dataclass
class Sizes:
    """How long each stage trains, and on how much data (sized for 20 minutes on 2 CPU cores)."""
    teacher_steps: int = 80
    stage1_steps: int = 80
    stage2_steps: int = 50
    data: tuple[str, ...] = ()           # extra make_shards arguments
    eval_samples: int = 5000             # final evals (and the exported model's): the first N test images
    # every training run: periodic evals on the first 500 test images
    overrides: tuple[str, ...] = ("train.eval_every=20", "data.eval_max_samples=500", "train.save_every=0")

    def run_overrides(self) -> tuple[str, ...]:
        return (*self.overrides, f"data.final_eval_max_samples={self.eval_samples}")


QUICK = Sizes(teacher_steps=3, stage1_steps=3, stage2_steps=3, data=("--max-train", "512", "--max-test", "128",
              "--samples-per-shard", "128"), eval_samples=0,
              overrides=("data.num_workers=0", "data.eval_max_samples=64", "train.batch_size=16",
                         "train.eval_every=0", "train.save_every=0"))


def run_step(name: str, args: list[str], stdout_file: Path | None = None) -> float:
    """Run one step as a subprocess (its progress bar stays visible); returns its wall seconds."""
    print(f"\n=== [{name}] python {' '.join(args)}", flush=True)
    start = time.perf_counter()
    if stdout_file is not None:
        with stdout_file.open("w") as out:
            code = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=out).returncode
    else:
        code = subprocess.run([sys.executable, *args], cwd=ROOT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"demo step '{name}' failed (exit code {code}) — its output is above")
    print(f"=== [{name}] done in {seconds:.0f} s", flush=True)
    return seconds


def stage2(out: Path, name: str, data: Path, sizes: Sizes, steps: int, seed: int, *extra: str) -> list[str]:
    return ["-m", "stage2_contrastive.train", "--config", STAGE2_CFG, *extra, f"train.output_dir={out / name}",
            f"train.steps={steps}", f"train.seed={seed}", f"data.train_shards={data / 'train'}",
            f"data.eval_shards={data / 'test'}", *sizes.run_overrides()]


def plan(out: Path, data: Path, sizes: Sizes, seeds: list[int]) -> list[tuple[str, list[str], Path | None]]:
    """The demo's steps: (name, python arguments, file for its stdout or None)."""
    steps = [("data", ["scripts/make_shards.py", "--source", "fashion-mnist", "--out", str(data), *sizes.data], None),
             ("teacher", stage2(out, "teacher", data, sizes, sizes.teacher_steps, 0), None),
             ("teacher_export", ["scripts/export_open_clip.py", str(out / "teacher"), str(out / "teacher_export")], None),
             ("stage1", ["-m", "stage1_mim.train", "--config", STAGE1_CFG,
                         f"teacher.model=local-dir:{out / 'teacher_export'}", f"train.output_dir={out / 'stage1'}",
                         f"train.steps={sizes.stage1_steps}", f"data.train_shards={data / 'train'}",
                         f"data.eval_shards={data / 'test'}", *sizes.run_overrides()], None)]
    for seed in seeds:
        init = ("--init", str(out / "stage1"))
        steps += [(f"init_seed{seed}", stage2(out, f"init_seed{seed}", data, sizes, sizes.stage2_steps, seed, *init), None),
                  (f"scratch_seed{seed}", stage2(out, f"scratch_seed{seed}", data, sizes, sizes.stage2_steps, seed), None),
                  (f"init_sigmoid_seed{seed}", stage2(out, f"init_sigmoid_seed{seed}", data, sizes, sizes.stage2_steps,
                                                      seed, *init, "loss=sigmoid"), None)]
    first = f"init_seed{seeds[0]}"
    steps += [("export", ["scripts/export_open_clip.py", str(out / first), str(out / "export")], None),
              ("export_eval", ["scripts/eval_zeroshot.py", "--model", f"local-dir:{out / 'export'}",
                               "--data", str(data / "test"), "--max-samples", str(sizes.eval_samples)],
               out / "export_eval.json"),
              ("report", ["scripts/demo_report.py", str(out)], None)]
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--data", default="data/fashion-mnist")
    parser.add_argument("--quick", action="store_true", help="tiny steps and data (the end-to-end test)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args(argv)
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times_file = out / "step_times.json"
    times: dict[str, float] = {}
    start = time.perf_counter()
    try:
        for name, step_args, stdout_file in plan(out, data, QUICK if args.quick else Sizes(), args.seeds):
            times[name] = round(run_step(name, step_args, stdout_file), 1)
            times_file.write_text(json.dumps(times, indent=2))  # the report step reads it
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
