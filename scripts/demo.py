"""The end-to-end demo: the recipe (`scripts/recipe.py`) on Fashion-MNIST at sizes that fit ~20 minutes on
2 CPU cores.

data → teacher (stage 2 from scratch on the same data, 80 steps: a teacher bootstrapped from the student's
own data, not one that knows more) → export → stage 1 MIM with that teacher → stage 2 --init from stage 1
and the scratch controls (same stage-2 steps, every seed; equal student compute and equal total compute,
first seed) → export → zero-shot of the export through open_clip → report. `--sigmoid-seeds N` adds
the --init run with the sigmoid loss for the first N seeds. `python scripts/demo.py [--quick]`;
`scripts/demo.sh` sets up the venv first. `--quick` shrinks every step (the end-to-end test runs it).
"""
from __future__ import annotations

import sys
from pathlib import Path

# scripts/ is on sys.path when this runs as a script
from recipe import QUICK, Recipe, Sizes, parser, run, with_sigmoid

DEMO = Sizes()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.set_defaults(out="runs/demo", data="data/fashion-mnist")
    args = p.parse_args(argv)
    sizes = with_sigmoid(QUICK if args.quick else DEMO, args.sigmoid_seeds)
    return run(Recipe("fashion-mnist", Path(args.out).resolve(), Path(args.data).resolve(), sizes, tuple(args.seeds)))


if __name__ == "__main__":
    sys.exit(main())
