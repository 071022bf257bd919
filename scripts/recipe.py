"""The two-stage recipe on any data, one named step after another (a failure stops it and names the step).

shards → the image pool (every training image, no captions: stage 1's data) and the caption set (`--captions
N`: a seeded subset of N pairs; stage 2's data, the same pairs for every arm) → a teacher → its own
zero-shot → stage 1 MIM on the pool against the frozen teacher → its check against an image-blind predictor
(`scripts/stage1_check.py`) → stage 2 `--init` from stage 1 and scratch controls on the caption set →
export → zero-shot of the export through stock open_clip on the held-out split → report
(`scripts/demo_report.py`).

Teachers (`--teacher`):
  reference          stage 2 from scratch on the WHOLE training set (every caption), `--reference-steps`
                     steps, seed 0 whatever the students' seeds, made once and reused from `--teacher-cache`
                     (scripts/reference_teacher.py)
  bootstrap          stage 2 from scratch on the caption set, `--teacher-steps` steps (the student's own data)
  local-dir:PATH     a given open_clip export, frozen and used as is

Scratch controls (all stage 2 from random init, same batch, config and caption set):
  scratch                 the same stage-2 steps as `--init`
  scratch_equal_student   stage-1 + stage-2 steps: the student's whole budget, the teacher taken as given
  scratch_equal_total     teacher + stage-1 + stage-2 steps (not for a given teacher: its steps are unknown)
and, on request (--sigmoid-seeds), the --init run with the sigmoid loss. Several `--captions` counts run
the students of each in `OUT/captions_N/` (one teacher, one stage 1; all pairs alone: OUT itself). A step whose
arguments match a finished one of an earlier call of the same OUT is not run again (`--fresh`: run everything).
`--jobs J` runs up to J steps at once as their inputs are ready (scripts/recipe_runner.py; default: one per
CPU core, each with its share of the cores' threads), e.g. the scratch controls beside the teacher and stage 1.

    python scripts/recipe.py --source folder:PATH --out runs/own_data --data data/own_data
    scripts/recipe_own_data.sh PATH          (sets up .venv first)
    scripts/demo.py                          (this recipe on Fashion-MNIST at the demo's sizes)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

# scripts/ is on sys.path when this runs as a script
from recipe_runner import BAD_INPUT, Ledger, Step, StepFailed, execute

STAGE1_CFG, STAGE2_CFG = "configs/stage1/fmnist_tiny.yaml", "configs/stage2/fmnist_tiny.yaml"
DEFAULT_CACHE = Path.home() / ".cache" / "evaclip" / "teachers"  # stage1_mim.teacher_cache.DEFAULT_CACHE
TEACHERS = ("reference", "bootstrap")  # or local-dir:PATH


@dataclass(frozen=True)
class Sizes:
    """How long each stage trains, on how much data, and which runs are made (per caption count)."""
    teacher_steps: int = 80              # a bootstrapped teacher
    reference_steps: int = 300           # the reference teacher
    stage1_steps: int = 80
    stage2_steps: int = 50
    scratch_seeds: int = 99              # scratch at the same stage-2 steps for the first N seeds
    control_seeds: int = 1               # the equal-student-compute control for the first N seeds
    total_seeds: int = 1                 # the equal-total-compute control for the first N seeds
    sigmoid_seeds: int = 0               # an --init run with the sigmoid loss for the first N seeds
    data: tuple[str, ...] = ()           # extra make_shards arguments
    eval_samples: int = 2000             # final evals (and the exported model's): the first N test images
    # every training run: periodic evals on the first 500 test images
    overrides: tuple[str, ...] = ("train.eval_every=20", "data.eval_max_samples=500", "train.save_every=0")

    def run_overrides(self) -> tuple[str, ...]:
        return (*self.overrides, f"data.final_eval_max_samples={self.eval_samples}")


QUICK = Sizes(teacher_steps=3, reference_steps=4, stage1_steps=3, stage2_steps=3, sigmoid_seeds=1,
              data=("--max-train", "512", "--max-test", "128", "--samples-per-shard", "128"), eval_samples=0,
              overrides=("data.num_workers=0", "data.eval_max_samples=64", "train.batch_size=16",
                         "train.eval_every=0", "train.save_every=0"))


@dataclass(frozen=True)
class Recipe:
    """Where the recipe reads and writes, and what it trains."""
    source: str                          # make_shards --source (fashion-mnist, folder:PATH, csv:FILE)
    out: Path                            # run folders, step_times.json, report
    data: Path                           # shards (train/, test/, pool/, captions_N_seedS/)
    sizes: Sizes = Sizes()
    seeds: tuple[int, ...] = (0, 1)
    teacher: str = "bootstrap"           # reference | bootstrap | local-dir:PATH
    stage1_config: str = STAGE1_CFG
    stage2_config: str = STAGE2_CFG
    stage1_set: tuple[str, ...] = ()     # extra overrides of stage 1
    stage2_set: tuple[str, ...] = ()     # extra overrides of every stage-2 run (teacher and controls too)
    student_set: tuple[str, ...] = ()    # extra overrides of the student's stage-2 runs only (not the teacher's)
    captions: tuple[Optional[int], ...] = (None,)  # caption counts (None: every pair)
    captions_seed: int = 0               # the seed of the caption subsets (the same for every arm and seed)
    pool: str = ""                       # make_shards source of stage 1's images (images:PATH); "": the train split's
    teacher_cache: Path = DEFAULT_CACHE


def count_label(n: Optional[int]) -> str:
    return "all" if n is None else str(n)


def caption_shards(r: Recipe, n: Optional[int]) -> Path:
    """The caption set of `n` pairs (all: the training split itself)."""
    return r.data / "train" if n is None else r.data / f"captions_{n}_seed{r.captions_seed}" / "train"


def students_dir(r: Recipe, n: Optional[int]) -> Path:
    """Where the student runs of caption count `n` go: OUT/captions_N (OUT itself when every pair is the only
    count), so that a later call with more counts finds them."""
    return r.out if r.captions == (None,) else r.out / f"captions_{count_label(n)}"


def data_overrides(r: Recipe, train: Path) -> list[str]:
    return [f"data.train_shards={train}", f"data.eval_shards={r.data / 'test'}", *r.sizes.run_overrides()]


def stage2(r: Recipe, folder: Path, name: str, steps: int, seed: int, train: Path, *extra: str,
           after: tuple[str, ...]) -> Step:
    """One stage-2 run named `name` (its folder under `folder`) on the shards `train`; a student's run (any
    but the teacher) takes `student_set` too."""
    student = r.student_set if name != "teacher" else ()
    args = ["-m", "stage2_contrastive.train", "--config", r.stage2_config, *extra, f"train.output_dir={folder / name}",
            f"train.steps={steps}", f"train.seed={seed}", *data_overrides(r, train), *r.stage2_set, *student]
    return Step(stage2_name(r, folder / name), tuple(args), after=after)


def caption_step(r: Recipe, n: Optional[int]) -> tuple[str, ...]:
    """The step that writes the caption set of `n` pairs (all: the shards themselves)."""
    return ("data",) if n is None else (f"captions_{n}",)


def data_steps(r: Recipe) -> list[Step]:
    """Shards of the source, stage 1's image pool, and every caption set."""
    steps = [Step("data", ("scripts/make_shards.py", "--source", r.source, "--out", str(r.data), *r.sizes.data))]
    images, made_by = r.data / "train", "data"
    if r.pool:
        steps.append(Step("pool_data", ("scripts/make_shards.py", "--source", r.pool, "--out",
                                        str(r.data / "pool_source"), "--test-fraction", "0")))
        images, made_by = r.data / "pool_source" / "train", "pool_data"
    steps.append(Step("pool", ("-m", "common.datasets.subsets", "pool", str(images), str(r.data / "pool")),
                      after=(made_by,)))
    for n in (n for n in r.captions if n is not None):
        steps.append(Step(f"captions_{n}", ("-m", "common.datasets.subsets", "captions", str(r.data / "train"),
                                            str(caption_shards(r, n).parent), "--n", str(n),
                                            "--seed", str(r.captions_seed)), after=("data",)))
    return steps


def teacher_steps(r: Recipe) -> tuple[list[Step], str]:
    """The steps that make the teacher (none when one is given) and its `teacher.model` value."""
    if r.teacher not in TEACHERS:
        return [], r.teacher
    export = r.out / "teacher_export"
    if r.teacher == "reference":
        sets = [*r.sizes.run_overrides(), *r.stage2_set]
        return [Step("teacher", ("scripts/reference_teacher.py", "--shards", str(r.data / "train"), "--eval-shards",
                                 str(r.data / "test"), "--out", str(r.out), "--config", r.stage2_config, "--steps",
                                 str(r.sizes.reference_steps), "--seed", "0", "--cache", str(r.teacher_cache),
                                 "--set", *sets), after=("data",))], f"local-dir:{export}"
    made = stage2(r, r.out, "teacher", r.sizes.teacher_steps, r.seeds[0], caption_shards(r, r.captions[0]),
                  after=caption_step(r, r.captions[0]))
    export_step = Step("teacher_export", ("scripts/export_open_clip.py", str(r.out / "teacher"), str(export)),
                       after=("teacher",))
    return [made, export_step], f"local-dir:{export}"


def teacher_total_steps(r: Recipe) -> Optional[int]:
    """The teacher's training steps (None: a given teacher, whose steps are unknown)."""
    return {"reference": r.sizes.reference_steps, "bootstrap": r.sizes.teacher_steps}.get(r.teacher)


def student_runs(r: Recipe, n: Optional[int]) -> list[Step]:
    """Stage 2 `--init` and its scratch controls on the caption set of `n` pairs, seed by seed."""
    s, init, folder, train = r.sizes, ("--init", str(r.out / "stage1")), students_dir(r, n), caption_shards(r, n)
    student, teacher = s.stage1_steps + s.stage2_steps, teacher_total_steps(r)
    data, from_stage1 = caption_step(r, n), (*caption_step(r, n), "stage1")
    steps: list[Step] = []
    for i, seed in enumerate(r.seeds):
        steps.append(stage2(r, folder, f"init_seed{seed}", s.stage2_steps, seed, train, *init, after=from_stage1))
        if i < s.scratch_seeds:
            steps.append(stage2(r, folder, f"scratch_seed{seed}", s.stage2_steps, seed, train, after=data))
        if i < s.sigmoid_seeds:
            steps.append(stage2(r, folder, f"init_sigmoid_seed{seed}", s.stage2_steps, seed, train, *init,
                                "loss=sigmoid", after=from_stage1))
        if i < s.control_seeds:
            steps.append(stage2(r, folder, f"scratch_equal_student_seed{seed}", student, seed, train, after=data))
        if i < s.total_seeds and teacher is not None:
            steps.append(stage2(r, folder, f"scratch_equal_total_seed{seed}", teacher + student, seed, train,
                                after=data))
    return steps


def plan(r: Recipe) -> list[Step]:
    """Every step of the recipe, in order (each after the steps it reads)."""
    make, model = teacher_steps(r)
    teacher = tuple(step.name for step in make[-1:])  # the step that leaves the teacher's export
    steps: list[Step] = [*data_steps(r), *make]
    steps += [eval_step("teacher_eval", model, r, after=("data", *teacher)),
              Step("stage1", ("-m", "stage1_mim.train", "--config", r.stage1_config, f"teacher.model={model}",
                              f"train.output_dir={r.out / 'stage1'}", f"train.steps={r.sizes.stage1_steps}",
                              *data_overrides(r, r.data / "pool" / "train"), *r.stage1_set),
                   after=("pool", *teacher)),
              Step("stage1_check", ("scripts/stage1_check.py", str(r.out / "stage1")), r.out / "stage1_check.json",
                   after=("stage1",))]
    for n in r.captions:
        steps += student_runs(r, n)
    first = students_dir(r, r.captions[0]) / f"init_seed{r.seeds[0]}"
    steps += [Step("export", ("scripts/export_open_clip.py", str(first), str(r.out / "export")),
                   after=(stage2_name(r, first),)),
              eval_step("export_eval", f"local-dir:{r.out / 'export'}", r, after=("export",))]
    return [*steps, Step("report", ("scripts/demo_report.py", str(r.out)), after=tuple(s.name for s in steps),
                         always=True)]


def stage2_name(r: Recipe, folder: Path) -> str:
    """The step name of the stage-2 run in `folder`."""
    return folder.name if folder.parent == r.out else f"{folder.parent.name}/{folder.name}"


def eval_step(name: str, model: str, r: Recipe, after: tuple[str, ...]) -> Step:
    """scripts/eval_zeroshot.py of `model` on the first `eval_samples` held-out images (skipped when the data
    have no class names)."""
    return Step(name, ("scripts/eval_zeroshot.py", "--model", model, "--data", str(r.data / "test"), "--max-samples",
                       str(r.sizes.eval_samples)), r.out / f"{name}.json", after=after,
                requires=r.data / "classnames.txt", why=f"{r.source} has no class names (zero-shot needs them)")


def run(r: Recipe, fresh: bool = False, jobs: int = 1) -> int:
    """Run every step of `r` (`run_recipes`)."""
    return run_recipes([r], fresh, jobs)


def run_recipes(recipes: list[Recipe], fresh: bool = False, jobs: int = 1) -> int:
    """Run every step of the recipes as one plan (`recipe_runner.execute`: the steps they share once, skipping
    those an earlier call finished with the same arguments unless `fresh`); one line on stderr naming the failed
    step, and its exit status: 2 when a step failed on bad input, else 1."""
    for r in recipes:
        r.out.mkdir(parents=True, exist_ok=True)
        (r.out / "recipe.json").write_text(json.dumps(recipe_record(r), indent=2))
    try:
        execute([(Ledger(r.out, fresh), plan(r)) for r in recipes], jobs, fresh)
    except StepFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return BAD_INPUT if err.code == BAD_INPUT else 1
    print(f"\nfinished: {', '.join(str(r.out / 'report.md') for r in recipes)}")
    return 0


def recipe_record(r: Recipe) -> dict[str, object]:
    return {"source": r.source, "teacher": r.teacher, "seeds": list(r.seeds), "pool": r.pool or "the train split",
            "captions": [count_label(n) for n in r.captions], "captions_seed": r.captions_seed,
            "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in r.sizes.__dict__.items()}}


def with_sigmoid(sizes: Sizes, sigmoid_seeds: int | None) -> Sizes:
    """`sizes` with `--sigmoid-seeds` applied when given."""
    return sizes if sigmoid_seeds is None else replace(sizes, sigmoid_seeds=sigmoid_seeds)


def parse_count(text: str) -> Optional[int]:
    """A `--captions` value: a positive count, or `all`/0 (every pair: None)."""
    if text in ("all", "0"):
        return None
    count = int(text)
    if count < 0:
        raise argparse.ArgumentTypeError(f"--captions {text}: give a positive count or 'all'")
    return count


def parser(description: str = __doc__) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/recipe", help="run folders and the report")
    p.add_argument("--data", default="data/recipe", help="where the shards are written")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--quick", action="store_true", help="tiny steps and data (the end-to-end tests)")
    p.add_argument("--sigmoid-seeds", type=int, default=None,
                   help="--init runs with the sigmoid loss for the first N seeds (default: the preset's)")
    p.add_argument("--teacher-cache", type=Path, default=DEFAULT_CACHE, help="where reference teachers are kept")
    p.add_argument("--fresh", action="store_true", help="run every step, even those an earlier call finished")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="steps run at once when their inputs are ready (default: one per CPU core)")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    p.add_argument("--source", required=True, help="folder:PATH (PATH/<class>/<image>) | csv:FILE | fashion-mnist")
    p.add_argument("--pool", default="", help="stage 1's images, a make_shards source without captions "
                                              "(images:PATH); default: the training split's images")
    p.add_argument("--captions", type=parse_count, nargs="+", default=[None], metavar="N",
                   help="caption counts for stage 2 (seeded subsets; 'all': every pair)")
    p.add_argument("--captions-seed", type=int, default=0, help="the seed of the caption subsets")
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share of a folder or CSV")
    p.add_argument("--teacher", default="bootstrap", help="reference | bootstrap | local-dir:PATH (module doc)")
    p.add_argument("--teacher-steps", type=int, default=Sizes.teacher_steps, help="a bootstrapped teacher's")
    p.add_argument("--reference-steps", type=int, default=Sizes.reference_steps, help="the reference teacher's")
    p.add_argument("--stage1-steps", type=int, default=Sizes.stage1_steps)
    p.add_argument("--stage2-steps", type=int, default=Sizes.stage2_steps)
    p.add_argument("--scratch-seeds", type=int, default=Sizes.scratch_seeds,
                   help="scratch at the same stage-2 steps for the first N seeds")
    p.add_argument("--control-seeds", type=int, default=Sizes.control_seeds,
                   help="equal-student-compute scratch controls for the first N seeds (0: none)")
    p.add_argument("--total-seeds", type=int, default=Sizes.total_seeds,
                   help="equal-total-compute scratch controls for the first N seeds (0: none)")
    p.add_argument("--stage1-config", default=STAGE1_CFG)
    p.add_argument("--stage2-config", default=STAGE2_CFG)
    p.add_argument("--stage1-set", nargs="*", default=[], metavar="KEY=VALUE", help="stage-1 overrides")
    p.add_argument("--stage2-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of every stage-2 run")
    p.add_argument("--student-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the student's stage-2 runs only (--init and the controls, not the teacher)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else Sizes(teacher_steps=a.teacher_steps, reference_steps=a.reference_steps,
                                       stage1_steps=a.stage1_steps, stage2_steps=a.stage2_steps)
    shard_args = ("--test-fraction", str(a.test_fraction)) if a.source != "fashion-mnist" else ()
    sizes = replace(with_sigmoid(base, a.sigmoid_seeds), data=(*base.data, *shard_args), control_seeds=a.control_seeds,
                    scratch_seeds=a.scratch_seeds, total_seeds=a.total_seeds)
    r = Recipe(a.source, Path(a.out).resolve(), Path(a.data).resolve(), sizes, tuple(a.seeds), a.teacher,
               a.stage1_config, a.stage2_config, tuple(a.stage1_set), tuple(a.stage2_set), tuple(a.student_set),
               tuple(a.captions), a.captions_seed, a.pool, a.teacher_cache.expanduser().resolve())
    return checked_run(r, a.fresh, a.jobs)


def checked_run(r: Recipe, fresh: bool = False, jobs: int = 1) -> int:
    """`run(r)` after the checks that need no training: a given teacher is an open_clip export, the
    bootstrapped teacher has one caption set to train on. One line on stderr and 2 otherwise."""
    from stage1_mim.teacher_cache import NotAnExportError, require_open_clip_export
    try:
        if r.teacher.startswith("local-dir:"):
            require_open_clip_export(r.teacher[len("local-dir:"):])
        elif r.teacher not in TEACHERS:
            raise ValueError(f"--teacher {r.teacher}: use reference, bootstrap or local-dir:PATH (an open_clip export)")
        if r.teacher == "bootstrap" and len(r.captions) > 1:
            raise ValueError("--teacher bootstrap trains on the student's caption set: give one --captions count "
                             "(or use --teacher reference)")
    except (NotAnExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return run(r, fresh, jobs)


if __name__ == "__main__":
    sys.exit(main())
