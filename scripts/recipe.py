"""The two-stage recipe on any data, one named step after another (a failure stops it and names the step).

shards → teacher (stage 2 from scratch on the same data, or a given open_clip teacher) → stage 1 MIM
against the frozen teacher → its check against an image-blind predictor (`scripts/stage1_check.py`) →
stage 2 `--init` from stage 1 and scratch controls → export → zero-shot of
the export through stock open_clip on the held-out split → report (`scripts/demo_report.py`).

Scratch controls (all stage 2 from random init, same batch and config):
  scratch                 the same stage-2 steps as `--init` (every seed)
  scratch_equal_student   stage-1 + stage-2 steps: the student's whole budget, the teacher taken as given
  scratch_equal_total     teacher + stage-1 + stage-2 steps (only when the recipe trained the teacher)
and, on request (--sigmoid-seeds), the --init run with the sigmoid loss.

    python scripts/recipe.py --source folder:PATH --out runs/own_data --data data/own_data
    scripts/recipe_own_data.sh PATH          (sets up .venv first)
    scripts/demo.py                          (this recipe on Fashion-MNIST at the demo's sizes)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE1_CFG, STAGE2_CFG = "configs/stage1/fmnist_tiny.yaml", "configs/stage2/fmnist_tiny.yaml"
Step = tuple[str, list[str], "Path | None"]  # (name, python arguments, file for its stdout or None)


@dataclass(frozen=True)
class Sizes:
    """How long each stage trains, on how much data, and which runs are made."""
    teacher_steps: int = 80
    stage1_steps: int = 80
    stage2_steps: int = 50
    control_seeds: int = 1               # the equal-compute controls run for the first N seeds
    sigmoid_seeds: int = 0               # an --init run with the sigmoid loss for the first N seeds
    data: tuple[str, ...] = ()           # extra make_shards arguments
    eval_samples: int = 2000             # final evals (and the exported model's): the first N test images
    # every training run: periodic evals on the first 500 test images
    overrides: tuple[str, ...] = ("train.eval_every=20", "data.eval_max_samples=500", "train.save_every=0")

    def run_overrides(self) -> tuple[str, ...]:
        return (*self.overrides, f"data.final_eval_max_samples={self.eval_samples}")


QUICK = Sizes(teacher_steps=3, stage1_steps=3, stage2_steps=3, sigmoid_seeds=1,
              data=("--max-train", "512", "--max-test", "128", "--samples-per-shard", "128"), eval_samples=0,
              overrides=("data.num_workers=0", "data.eval_max_samples=64", "train.batch_size=16",
                         "train.eval_every=0", "train.save_every=0"))


@dataclass(frozen=True)
class Recipe:
    """Where the recipe reads and writes, and what it trains."""
    source: str                          # make_shards --source (fashion-mnist, folder:PATH, csv:FILE)
    out: Path                            # run folders, step_times.json, report
    data: Path                           # shards (train/, test/)
    sizes: Sizes = Sizes()
    seeds: tuple[int, ...] = (0, 1)
    teacher: str = ""                    # a given open_clip teacher (local-dir:PATH); empty: train one
    stage1_config: str = STAGE1_CFG
    stage2_config: str = STAGE2_CFG
    stage1_set: tuple[str, ...] = ()     # extra overrides of stage 1
    stage2_set: tuple[str, ...] = ()     # extra overrides of every stage-2 run (teacher and controls too)


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
        raise RuntimeError(f"step '{name}' failed (exit code {code}) — its output is above")
    print(f"=== [{name}] done in {seconds:.0f} s", flush=True)
    return seconds


def data_overrides(r: Recipe) -> list[str]:
    return [f"data.train_shards={r.data / 'train'}", f"data.eval_shards={r.data / 'test'}",
            *r.sizes.run_overrides()]


def stage2(r: Recipe, name: str, steps: int, seed: int, *extra: str) -> Step:
    """One stage-2 run named `name` (its folder under `r.out`)."""
    args = ["-m", "stage2_contrastive.train", "--config", r.stage2_config, *extra, f"train.output_dir={r.out / name}",
            f"train.steps={steps}", f"train.seed={seed}", *data_overrides(r), *r.stage2_set]
    return name, args, None


def teacher_steps(r: Recipe) -> tuple[list[Step], str]:
    """The steps that make the teacher (none when one is given) and its `teacher.model` value."""
    if r.teacher:
        return [], r.teacher
    export = r.out / "teacher_export"
    return [stage2(r, "teacher", r.sizes.teacher_steps, r.seeds[0]),
            ("teacher_export", ["scripts/export_open_clip.py", str(r.out / "teacher"), str(export)], None)], \
        f"local-dir:{export}"


def student_runs(r: Recipe) -> list[Step]:
    """Stage 2 `--init` and its scratch controls, seed by seed (module docstring)."""
    s, init = r.sizes, ("--init", str(r.out / "stage1"))
    steps: list[Step] = []
    for i, seed in enumerate(r.seeds):
        steps += [stage2(r, f"init_seed{seed}", s.stage2_steps, seed, *init),
                  stage2(r, f"scratch_seed{seed}", s.stage2_steps, seed)]
        if i < s.sigmoid_seeds:
            steps.append(stage2(r, f"init_sigmoid_seed{seed}", s.stage2_steps, seed, *init, "loss=sigmoid"))
        if i < s.control_seeds:
            steps.append(stage2(r, f"scratch_equal_student_seed{seed}", s.stage1_steps + s.stage2_steps, seed))
            if not r.teacher:
                total = s.teacher_steps + s.stage1_steps + s.stage2_steps
                steps.append(stage2(r, f"scratch_equal_total_seed{seed}", total, seed))
    return steps


def plan(r: Recipe) -> list[Step]:
    """Every step of the recipe, in order."""
    make, model = teacher_steps(r)
    steps: list[Step] = [("data", ["scripts/make_shards.py", "--source", r.source, "--out", str(r.data),
                                   *r.sizes.data], None), *make,
                         ("stage1", ["-m", "stage1_mim.train", "--config", r.stage1_config, f"teacher.model={model}",
                                     f"train.output_dir={r.out / 'stage1'}", f"train.steps={r.sizes.stage1_steps}",
                                     *data_overrides(r), *r.stage1_set], None),
                         ("stage1_check", ["scripts/stage1_check.py", str(r.out / "stage1")], r.out / "stage1_check.json")]
    steps += student_runs(r)
    first = f"init_seed{r.seeds[0]}"
    steps += [("export", ["scripts/export_open_clip.py", str(r.out / first), str(r.out / "export")], None),
              ("export_eval", ["scripts/eval_zeroshot.py", "--model", f"local-dir:{r.out / 'export'}",
                               "--data", str(r.data / "test"), "--max-samples", str(r.sizes.eval_samples)],
               r.out / "export_eval.json"),
              ("report", ["scripts/demo_report.py", str(r.out)], None)]
    return steps


def run(r: Recipe) -> int:
    """Run every step; each one's wall seconds go to `OUT/step_times.json` (the report reads them)."""
    r.out.mkdir(parents=True, exist_ok=True)
    recipe_file = r.out / "recipe.json"
    recipe_file.write_text(json.dumps({"source": r.source, "teacher": r.teacher or "trained by the recipe",
                                       "seeds": list(r.seeds), "sizes": sizes_record(r.sizes)}, indent=2))
    times_file = r.out / "step_times.json"
    times: dict[str, float] = {}
    start = time.perf_counter()
    try:
        for name, step_args, stdout_file in plan(r):
            if name == "export_eval" and not (r.data / "classnames.txt").is_file():
                print(f"=== [{name}] skipped: {r.source} has no class names (zero-shot needs them)", flush=True)
                continue
            times[name] = round(run_step(name, step_args, stdout_file), 1)
            times_file.write_text(json.dumps(times, indent=2))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"\nfinished in {time.perf_counter() - start:.0f} s: {r.out / 'report.md'}")
    return 0


def sizes_record(sizes: Sizes) -> dict[str, object]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.__dict__.items()}


def with_sigmoid(sizes: Sizes, sigmoid_seeds: int | None) -> Sizes:
    """`sizes` with `--sigmoid-seeds` applied when given."""
    return sizes if sigmoid_seeds is None else replace(sizes, sigmoid_seeds=sigmoid_seeds)


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/recipe", help="run folders and the report")
    p.add_argument("--data", default="data/recipe", help="where the shards are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--quick", action="store_true", help="tiny steps and data (the end-to-end tests)")
    p.add_argument("--sigmoid-seeds", type=int, default=None,
                   help="--init runs with the sigmoid loss for the first N seeds (default: the preset's)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.add_argument("--source", required=True, help="folder:PATH (PATH/<class>/<image>) | csv:FILE | fashion-mnist")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of a folder or CSV")
    p.add_argument("--teacher", default="", help="a given open_clip teacher (local-dir:PATH); default: train one")
    p.add_argument("--teacher-steps", type=int, default=Sizes.teacher_steps)
    p.add_argument("--stage1-steps", type=int, default=Sizes.stage1_steps)
    p.add_argument("--stage2-steps", type=int, default=Sizes.stage2_steps)
    p.add_argument("--control-seeds", type=int, default=Sizes.control_seeds,
                   help="equal-compute scratch controls for the first N seeds (0: none)")
    p.add_argument("--stage1-config", default=STAGE1_CFG)
    p.add_argument("--stage2-config", default=STAGE2_CFG)
    p.add_argument("--stage1-set", nargs="*", default=[], metavar="KEY=VALUE", help="stage-1 overrides")
    p.add_argument("--stage2-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of every stage-2 run")
    a = p.parse_args(argv)
    base = QUICK if a.quick else Sizes(teacher_steps=a.teacher_steps, stage1_steps=a.stage1_steps,
                                       stage2_steps=a.stage2_steps)
    shard_args = ("--test-fraction", str(a.test_fraction)) if a.source != "fashion-mnist" else ()
    sizes = replace(with_sigmoid(base, a.sigmoid_seeds), data=(*base.data, *shard_args), control_seeds=a.control_seeds)
    return run(Recipe(a.source, Path(a.out).resolve(), Path(a.data).resolve(), sizes, tuple(a.seeds), a.teacher,
                      a.stage1_config, a.stage2_config, tuple(a.stage1_set), tuple(a.stage2_set)))


if __name__ == "__main__":
    sys.exit(main())
