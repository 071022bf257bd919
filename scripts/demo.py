"""The end-to-end demo: the recipe (`scripts/recipe.py`) on Fashion-MNIST in the regime it is built for, at
sizes that fit 20 minutes on 2 CPU cores.

Headline (`OUT/`): a reference teacher (stage 2 on all 60 000 pairs, 300 steps; made once, then reused from
the teacher cache) → stage 1 MIM on the image pool (every training image, no captions) → stage 2 `--init`
on a seeded subset of N caption pairs, beside the scratch control at equal student compute (stage-1 +
stage-2 steps) on the same N pairs, both for every seed.
Counter-case (`OUT/bootstrap/`): the same chain with a teacher bootstrapped from those N pairs for 80 steps
(a teacher that knows no more than the student's data); its `--init` run is read against the same control.
`OUT/demo.md` puts both side by side. `python scripts/demo.py [--quick]`; `scripts/demo.sh` sets up the
venv first. `--quick` shrinks every step (the end-to-end test runs it).
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

# scripts/ is on sys.path when this runs as a script
from recipe import QUICK, Recipe, Sizes, checked_run, parser, with_sigmoid

CAPTIONS = 1000           # the caption count where the reference regime measured best (docs/RESULTS_REGIME.md)
DEMO = Sizes(scratch_seeds=0, control_seeds=2, total_seeds=0)
COUNTER_SEEDS = 1         # --init seeds of the counter-case


def recipes(args: Any) -> tuple[Recipe, Recipe]:
    """(headline, counter-case) recipes of the demo."""
    sizes = with_sigmoid(replace(QUICK, scratch_seeds=0, control_seeds=2, total_seeds=0) if args.quick else DEMO,
                         args.sigmoid_seeds)
    out, data = Path(args.out).resolve(), Path(args.data).resolve()
    count = 128 if args.quick else args.captions
    headline = Recipe("fashion-mnist", out, data, sizes, tuple(args.seeds), "reference", captions=(count,),
                      teacher_cache=args.teacher_cache.expanduser().resolve())
    counter_sizes = replace(sizes, control_seeds=0, sigmoid_seeds=0)
    counter = replace(headline, out=out / "bootstrap", teacher="bootstrap", sizes=counter_sizes,
                      seeds=tuple(args.seeds[:COUNTER_SEEDS]))
    return headline, counter


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.set_defaults(out="runs/demo", data="data/fashion-mnist")
    p.add_argument("--captions", type=int, default=CAPTIONS, help="caption pairs for stage 2")
    args = p.parse_args(argv)
    headline, counter = recipes(args)
    for recipe in (headline, counter):
        code = checked_run(recipe, args.fresh)
        if code:
            return code
    from demo_report import write_demo_summary
    print(write_demo_summary(headline.out, counter.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
