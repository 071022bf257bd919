"""The reference teacher: stage 2 from scratch on a WHOLE training set (every caption), for many more steps
than a student gets, made once and reused from a cache outside git (`stage1_mim/teacher_cache.py`), as a
downloaded CLIP would be. The recipe's `--teacher reference` runs this as its teacher step.

    python scripts/reference_teacher.py --shards data/fashion-mnist/train --eval-shards data/fashion-mnist/test \
        --out runs/demo [--steps 300] [--seed 0] [--cache ~/.cache/evaclip/teachers] [--set KEY=VALUE …]

The cache key is the resolved training config (less what does not change the weights) and the content of
the training shards; a reused entry costs nothing, a new one is trained, exported and renamed into place.
Writes `OUT/teacher.json` (the entry, whether it was made now, what making it cost) and points
`OUT/teacher_export` at the entry's open_clip folder (a symlink), which stage 1 loads.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from recipe import STAGE2_CFG
from recipe_runner import run_step

from common.config.schema import load_config, to_dict
from common.errors import ConfigError
from common.export import export_open_clip, relocate
from stage1_mim.teacher_cache import (DEFAULT_CACHE, CacheKeyError, TeacherKey, data_fingerprint, get_or_make,
                                      weight_config)
from stage2_contrastive.config import Stage2Config

KEEP_FROM_RUN = ("config.yaml", "metrics.jsonl")  # the entry's provenance; checkpoints are not kept


def training_overrides(a: argparse.Namespace) -> list[str]:
    """The teacher run's overrides: its data, steps, seed, then `--set` (the recipe's run settings)."""
    return [f"data.train_shards={Path(a.shards).resolve()}", f"data.eval_shards={Path(a.eval_shards).resolve()}",
            f"train.steps={a.steps}", f"train.seed={a.seed}", *a.set]


def make_teacher(a: argparse.Namespace, overrides: list[str]) -> Any:
    """`make` of the cache: train into TMP/run, export to TMP/export, keep the run's provenance only."""
    def make(tmp: Path) -> dict[str, Any]:
        run = tmp / "run"
        wall, cpu = run_step("reference teacher", ["-m", "stage2_contrastive.train", "--config", a.config,
                                                   *overrides, f"train.output_dir={run}"])
        export_open_clip(run, tmp / "export")
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
        for path in run.iterdir():
            if path.name not in KEEP_FROM_RUN:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "steps": a.steps,
                "final_eval": evals[-1]["eval"] if evals else {}}
    return make


def link(out: Path, export: Path) -> Path:
    """`OUT/teacher_export` → the entry's export (replaced if present)."""
    target = out / "teacher_export"
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)
    target.symlink_to(export, target_is_directory=True)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="the whole training set (every caption)")
    p.add_argument("--eval-shards", required=True, help="the held-out split (its final eval is recorded)")
    p.add_argument("--out", required=True, type=Path, help="the recipe's output folder")
    p.add_argument("--config", default=STAGE2_CFG)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where teachers are kept (outside git)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the teacher's run")
    a = p.parse_args(argv)
    overrides = training_overrides(a)
    try:
        cfg = load_config(Stage2Config, a.config, overrides)
        key = TeacherKey(weight_config(to_dict(cfg)), data_fingerprint(str(cfg.data.train_shards)))
        entry, record, made = get_or_make(a.cache, key, make_teacher(a, overrides),
                                          finish=lambda e: relocate(e / "export"))
    except (ConfigError, CacheKeyError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    link(a.out, entry / "export")
    info = {"entry": str(entry), "key_digest": entry.name.split("-", 1)[1], "made_now": made, **record["made"]}
    (a.out / "teacher.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"reference teacher {'made' if made else 'reused'}: {entry} ({json.dumps(record['made'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
