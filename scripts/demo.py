"""The end-to-end demo: the recipe (`scripts/recipe.py`) on Fashion-MNIST in the regime it is built for, at
sizes that fit 20 minutes on 2 CPU cores once the reference teacher is cached.

A reference teacher (stage 2 on all 60 000 pairs, 300 steps; made on the first call, then reused from the
teacher cache, as a downloaded CLIP would be) → stage 1 MIM, 240 steps on the image pool (every training
image, no captions) → stage 2 `--init` on a seeded subset of 200 caption pairs, beside the scratch control
at equal student compute (stage-1 + stage-2 steps = 290, the same 200 pairs), seeds 0 and 1 → export →
zero-shot of the export through open_clip → `OUT/report.md`. 200 pairs is where this regime measured best
(docs/results.md). Two steps run at once, one thread each (`--jobs`).

`--counter-case` also runs the regime the recipe is not for, in `OUT/bootstrap/`: a teacher bootstrapped from
the student's own captions for 80 steps (every pair), stage 1 80 steps, `--init` and every scratch control.
`python scripts/demo.py [--quick] [--counter-case]`; `scripts/demo.sh` sets up the venv first. `--quick`
shrinks every step (the end-to-end test runs it).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

# scripts/ is on sys.path when this runs as a script
from recipe import QUICK, Recipe, Sizes, parser, run_recipes, with_sigmoid

CAPTIONS = 200             # the caption count where the reference regime measured best
NO_EVALS = ("train.eval_every=0",)  # the regime's runs: final evals only
ARMS = {"scratch_seeds": 0, "control_seeds": 2, "total_seeds": 0}  # --init beside the equal-student control
HEADLINE = Sizes(stage1_steps=240, **ARMS)
COUNTER = Sizes()          # the bootstrapped recipe: teacher 80 → stage 1 80 → stage 2 50, every control


def recipes(args: Any) -> list[Recipe]:
    """The headline recipe, and the counter-case when asked for."""
    out, data, cache = Path(args.out).resolve(), Path(args.data).resolve(), args.teacher_cache.expanduser().resolve()
    sizes = replace(QUICK, sigmoid_seeds=0, **ARMS) if args.quick else HEADLINE
    headline = Recipe("fashion-mnist", out, data, with_sigmoid(sizes, args.sigmoid_seeds), tuple(args.seeds),
                      "reference", captions=(128 if args.quick else args.captions,), teacher_cache=cache,
                      stage1_set=NO_EVALS, student_set=NO_EVALS)
    if not args.counter_case:
        return [headline]
    counter = Recipe("fashion-mnist", out / "bootstrap", data, QUICK if args.quick else COUNTER, tuple(args.seeds))
    return [headline, counter]


def write_summary(made: list[Recipe], wall_s: float) -> str:
    """`OUT/demo.md`: where the reports are, whether the teacher was made or reused, what the call cost."""
    head = made[0].out
    teacher = json.loads((head / "teacher.json").read_text())
    how = "made by this call" if teacher.get("made_now") else "reused from the cache (made by an earlier call)"
    lines = ["# evaclip demo", "", f"- the regime the recipe is for: [report.md](report.md) (teacher "
             f"`{teacher['entry']}`: {how}; making it took {teacher.get('wall_s')} s wall, "
             f"{teacher.get('cpu_s')} CPU s)"]
    if len(made) > 1:
        lines.append("- the counter-case, a bootstrapped teacher: [bootstrap/report.md](bootstrap/report.md)")
    lines.append(f"- this call: {wall_s:.0f} s wall (steps an earlier call finished with the same arguments are not "
                 "rerun: `--fresh` reruns them)")
    text = "\n".join(lines) + "\n"
    (head / "demo.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.set_defaults(out="runs/demo", data="data/fashion-mnist")
    p.add_argument("--captions", type=int, default=CAPTIONS, help="caption pairs for stage 2")
    p.add_argument("--counter-case", action="store_true", help="also the bootstrapped-teacher recipe (OUT/bootstrap)")
    args = p.parse_args(argv)
    start, made = time.perf_counter(), recipes(args)
    code = run_recipes(made, args.fresh, args.jobs)
    if code == 0:
        print(write_summary(made, time.perf_counter() - start))
    return code


if __name__ == "__main__":
    sys.exit(main())
