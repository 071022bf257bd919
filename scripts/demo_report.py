"""Summarise a recipe's runs (`scripts/recipe.py`, `scripts/demo.py`): `OUT/results.json`, `report.md` and
PNG plots (headless matplotlib).

`python scripts/demo_report.py runs/demo` reads each run's `metrics.jsonl`, the recipe's `step_times.json`
(wall and CPU seconds per step), `recipe.json`, `teacher.json` / `teacher_eval.json` (the teacher and its own
zero-shot), `stage1_check.json` and `export_eval.json`, and reports per group (init / scratch / init_sigmoid /
scratch_equal_student / scratch_equal_total) the per-seed values with mean and spread, and each group's
compute in training steps: its own stage-2 steps, the student's (stage 1 + stage 2) and the total
(teacher + stage 1 + stage 2; a given teacher counts 0). With several caption counts (`OUT/captions_N/`),
the crossover: zero-shot vs N for `--init` and the equal-student control, the gap and its spread.
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common.artifacts import read_metrics

METRICS = ("zeroshot_top1", "zeroshot_top5", "i2t_R@1", "t2i_R@1")
GROUP_ORDER = ("init", "init_sigmoid", "scratch", "scratch_equal_student", "scratch_equal_total")
SHARED_RUNS = ("teacher", "stage1")  # run folders at OUT's top level (the teacher: a bootstrapped one only)


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Steps, final loss and last eval metrics of one run."""
    records = read_metrics(run_dir)
    losses = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    out: dict[str, Any] = {"steps": losses[-1]["step"] if losses else 0,
                           "final_loss": losses[-1]["loss"] if losses else None,
                           "first_loss": losses[0]["loss"] if losses else None}
    if evals:
        out.update(evals[-1]["eval"])
    return out


def curves(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, dict]]]:
    records = read_metrics(run_dir)
    return ([(r["step"], r["loss"]) for r in records if "loss" in r],
            [(r["step"], r["eval"]) for r in records if "eval" in r])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def spread(values: list[float]) -> str:
    """`mean ± std` in percent ("–" for none)."""
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def group_runs(folder: Path) -> dict[str, list[Path]]:
    """{group: [run dirs, one per seed]} from folders named `<group>_seed<N>`."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("*_seed*")):
        if (path / "metrics.jsonl").is_file():
            groups.setdefault(path.name.rsplit("_seed", 1)[0], []).append(path)
    return groups


def compute_steps(group: str, steps: int, extra: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(student steps, total steps) of one run: an `--init` run adds stage 1 (student) and the teacher
    (total); a scratch run's own steps are both. A given teacher (no `teacher` steps) counts 0."""
    if not group.startswith("init"):
        return steps, steps
    student = steps + int(extra.get("stage1", {}).get("steps", 0))
    return student, student + int(extra.get("teacher", {}).get("steps", 0))


def step_cost(times: dict[str, Any], name: str) -> tuple[float, float]:
    """(wall s, CPU s) of a recipe step (an older step_times.json holds wall seconds only: CPU 0)."""
    value = times.get(name, 0.0)
    return (value["wall_s"], value["cpu_s"]) if isinstance(value, dict) else (float(value), 0.0)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def collect_groups(folder: Path, prefix: str, times: dict[str, Any], extra: dict[str, dict]) -> dict[str, Any]:
    """One entry per group of the runs in `folder` (lists over seeds); step names start with `prefix`."""
    results: dict[str, Any] = {}
    groups = group_runs(folder)
    for group in sorted(groups, key=lambda g: (GROUP_ORDER + (g,)).index(g)):
        runs = groups[group]
        summaries = [run_summary(p) for p in runs]
        student, total = compute_steps(group, summaries[0]["steps"], extra)
        costs = [step_cost(times, prefix + p.name) for p in runs]
        results[group] = {"runs": [p.name for p in runs], "steps": [s["steps"] for s in summaries],
                          "student_steps": student, "total_steps": total,
                          "final_loss": [s["final_loss"] for s in summaries],
                          "wall_s": [round(c[0], 1) for c in costs], "cpu_s": [round(c[1], 1) for c in costs]}
        for metric in METRICS:
            key = "zero_shot_top1" if metric == "zeroshot_top1" else metric  # results.json contract name
            results[group][key] = [s.get(metric) for s in summaries]
    return results


def shared_runs(demo: Path, times: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The teacher (bootstrapped here, or the reference teacher's record) and stage 1, with their costs."""
    extra = {}
    for name in SHARED_RUNS:
        if (demo / name / "metrics.jsonl").is_file():
            wall, cpu = step_cost(times, name)
            extra[name] = dict(run_summary(demo / name), wall_s=round(wall, 1), cpu_s=round(cpu, 1))
    reference = read_json(demo / "teacher.json")
    if reference is not None:
        extra["teacher"] = dict(reference, reference=True)
    return extra


def caption_folders(demo: Path) -> dict[str, Path]:
    """{count label: folder} of a recipe with several caption counts (`OUT/captions_N/`), in count order."""
    found = {p.name.split("_", 1)[1]: p for p in demo.glob("captions_*") if p.is_dir() and group_runs(p)}
    return dict(sorted(found.items(), key=lambda kv: float("inf") if kv[0] == "all" else int(kv[0])))


def collect(demo: Path) -> dict[str, Any]:
    """results.json's content: one entry per group (lists over seeds) — per caption count under
    `captions` when there are several — the teacher, its own zero-shot, stage 1, the export."""
    times = read_json(demo / "step_times.json") or {}
    results: dict[str, Any] = {}
    if (demo / "recipe.json").is_file():
        results["recipe"] = read_json(demo / "recipe.json")
    extra = shared_runs(demo, times)
    folders = caption_folders(demo)
    if folders:
        results["captions"] = {label: collect_groups(folder, f"{folder.name}/", times, extra)
                               for label, folder in folders.items()}
    else:
        results.update(collect_groups(demo, "", times, extra))
    results.update(extra)
    for name in ("teacher_eval", "stage1_check", "export_eval"):
        if (demo / f"{name}.json").is_file():
            results[name] = read_json(demo / f"{name}.json")
    if "stage1_check" in results:
        results["stage1_check"]["cpu_s"] = round(step_cost(times, "stage1_check")[1], 1)
    if folders:
        results["gaps"] = {label: gap(*arms) for label, arms in crossover_arms(results).items()}
    return results


def top1(groups: dict[str, Any], group: str) -> list[float]:
    return [v for v in groups.get(group, {}).get("zero_shot_top1", []) if v is not None]


def crossover_arms(results: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """{count label: (`--init` top-1 per seed, equal-student control top-1 per seed)} where both ran."""
    arms = {label: (top1(g, "init"), top1(g, "scratch_equal_student")) for label, g in results["captions"].items()}
    return {label: pair for label, pair in arms.items() if pair[0] and pair[1]}


def main(argv: list[str] | None = None) -> int:
    from report_plots import crossover_plot, run_plots  # scripts/ is on sys.path when this runs as a script
    demo = Path((argv or sys.argv[1:] or ["runs/demo"])[0])
    results = collect(demo)
    (demo / "results.json").write_text(json.dumps(results, indent=2))
    if "captions" in results:
        arms = {label: (mean_std(init), mean_std(ctrl)) for label, (init, ctrl) in crossover_arms(results).items()}
        own = (results.get("teacher_eval") or {}).get("zeroshot_top1")
        source = results.get("recipe", {}).get("source", "")
        images = [crossover_plot(demo, arms, own, source)] if arms else []  # no arm pair ran: nothing to draw
        text = crossover_markdown(results, images)
    else:
        runs = [(group, path.name, curves(path)) for group, paths in group_runs(demo).items() for path in paths]
        runs += [(None, n, curves(demo / n)) for n in SHARED_RUNS if (demo / n).is_dir()]
        images = run_plots(demo, runs)
        text = report_markdown(results, images)
    (demo / "report.md").write_text(text)
    print(text)
    return 0


def group_rows(results: dict[str, Any]) -> list[str]:
    """The per-group table rows of one caption count."""
    lines = []
    for group, r in results.items():
        if not isinstance(r, dict) or "runs" not in r:
            continue
        losses = [v for v in r["final_loss"] if v is not None]
        lines.append(f"| {group} | {len(r['runs'])} | {r['steps'][0]} | {r['student_steps']} | {r['total_steps']} | "
                     f"{statistics.fmean(losses):.3f} | "
                     f"{spread([v for v in r['zero_shot_top1'] if v is not None])} | "
                     f"{', '.join(f'{100 * v:.2f}' for v in r['zero_shot_top1'] if v is not None)} | "
                     f"{spread([v for v in r['zeroshot_top5'] if v is not None])} | "
                     f"{spread([v for v in r['i2t_R@1'] if v is not None])} | "
                     f"{statistics.fmean(r['wall_s']):.0f} | {statistics.fmean(r['cpu_s']):.0f} |")
    return lines


def teacher_line(results: dict[str, Any]) -> str:
    """The teacher, its own zero-shot and what making it cost."""
    t, e = results.get("teacher", {}), results.get("teacher_eval") or {}
    own = f"{100 * e['zeroshot_top1']:.2f} %" if "zeroshot_top1" in e else "–"
    if t.get("reference"):
        how = ("made by this run" if t.get("made_now") else "reused from the cache") + \
              f" ({t.get('steps')} steps; making it took {t.get('wall_s')} s wall, {t.get('cpu_s')} CPU s)"
        return f"**teacher**: reference teacher `{t.get('entry')}`, {how}; its own zero-shot **{own}**"
    if t:
        return (f"**teacher**: bootstrapped from the caption set ({t.get('steps')} steps, {t.get('wall_s')} s wall, "
                f"{t.get('cpu_s')} CPU s); its own zero-shot **{own}**")
    given = results.get("recipe", {}).get("teacher", "")
    return f"**teacher**: given, `{given}`; its own zero-shot **{own}**"


def shared_markdown(results: dict[str, Any]) -> list[str]:
    """The teacher, stage 1, the stage-1 check and the export, as report paragraphs."""
    lines = ["", teacher_line(results)]
    if "stage1" in results:
        r = results["stage1"]
        detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
        lines += ["", f"**stage1** (on the image pool, no captions): {detail}"]
    if "stage1_check" in results:
        c = results["stage1_check"]
        probe = c.get("teacher_token_probe_top1", 0.0)
        lines += ["", f"**stage 1 vs an image-blind predictor** (cosine to the teacher's targets at masked tokens): "
                  f"student {c['masked_cos']:.3f}, image-blind {c['image_blind_cos']:.3f}, gain {c['gain']:+.3f} "
                  f"(near 0: stage 1 learned the teacher's average, not the images); visible tokens "
                  f"{c['visible_cos']:.3f}; the probe on the teacher's own tokens {100 * probe:.1f} %"]
    if "export_eval" in results:
        lines += ["", f"**exported model through open_clip**: `{json.dumps(results['export_eval'])}`"]
    return lines


TABLE_HEAD = ["| run | seeds | stage-2 steps | student steps | total steps | final loss | zero-shot top-1 | per seed "
              "| top-5 | i2t R@1 | wall s | CPU s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def intro(results: dict[str, Any]) -> str:
    recipe = results.get("recipe", {})
    return (f"Source `{recipe.get('source', 'the data')}`; teacher: {recipe.get('teacher', '?')}; caption counts "
            f"{recipe.get('captions', ['all'])} (subset seed {recipe.get('captions_seed', 0)}); stage 1 on "
            f"{recipe.get('pool', 'the train split')}'s images. Zero-shot on the held-out split (mean ± std over "
            "seeds, %). Compute in training steps (same batch): stage 2 alone, the student's (stage 1 + stage 2) and "
            "the total (teacher + stage 1 + stage 2); wall and CPU seconds per run (mean over seeds).")


def report_markdown(results: dict[str, Any], images: list[str]) -> str:
    lines = ["# evaclip recipe report", "", intro(results), "", *TABLE_HEAD, *group_rows(results)]
    lines += shared_markdown(results) + [""] + [f"![{img}]({img})" for img in images]
    return "\n".join(lines) + "\n"


def gap(init: list[float], control: list[float]) -> dict[str, Any]:
    """`--init` minus the control, per seed pair (paired by position) and overall: mean, std of the paired
    gaps, and `beats_noise`: the gap exceeds the two arms' seed spreads added (std init + std control)."""
    pairs = [a - b for a, b in zip(init, control)]
    (mi, si), (mc, sc) = mean_std(init), mean_std(control)
    return {"gap": mi - mc, "gap_std": mean_std(pairs)[1] if len(pairs) > 1 else 0.0, "noise": si + sc,
            "beats_noise": mi - mc > si + sc, "loses_beyond_noise": mc - mi > si + sc}


def crossover_rows(results: dict[str, Any]) -> list[str]:
    """The crossover table: one row per caption count where both arms ran."""
    rows = []
    for label, g in results["gaps"].items():
        groups = results["captions"][label]
        init, ctrl = top1(groups, "init"), top1(groups, "scratch_equal_student")
        mark = " **✓**" if g["beats_noise"] else (" ✗" if g["loses_beyond_noise"] else "")
        rows.append(f"| {label} | {len(init)} | {spread(init)} ({', '.join(f'{100 * v:.2f}' for v in init)}) | "
                    f"{spread(ctrl)} ({', '.join(f'{100 * v:.2f}' for v in ctrl)}) | "
                    f"{spread(top1(groups, 'scratch'))} | {100 * g['gap']:+.1f} ± {100 * g['gap_std']:.1f}{mark} |")
    return rows


def crossover_markdown(results: dict[str, Any], images: list[str]) -> str:
    rows = crossover_rows(results)
    lines = ["# evaclip crossover report", "", intro(results), "",
             "| captions N | seeds | `--init` | scratch, equal student compute | scratch, same stage-2 steps "
             "| gap (init − equal student) |", "|---|---|---|---|---|---|", *rows, "",
             "✓: `--init` beats the equal-student control by more than the two arms' seed spreads added; "
             "✗: loses by more than that; gap ± the spread of the seed-paired gaps."]
    for label, groups in results["captions"].items():
        lines += ["", f"### N = {label}", "", *TABLE_HEAD, *group_rows(groups)]
    lines += shared_markdown(results) + [""] + [f"![{img}]({img})" for img in images]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
