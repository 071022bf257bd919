"""Summarise a recipe's runs (`scripts/recipe.py`, `scripts/demo.py`): `OUT/results.json`, `report.md` and
PNG plots (headless matplotlib).

`python scripts/demo_report.py runs/demo` reads each run's `metrics.jsonl`, the recipe's `step_times.json`,
`recipe.json`, `stage1_check.json` and `export_eval.json`, and reports per group (init / scratch / init_sigmoid /
scratch_equal_student / scratch_equal_total) the per-seed values with mean and spread, and each group's
compute in training steps: its own stage-2 steps, the student's (stage 1 + stage 2) and the total
(teacher + stage 1 + stage 2; a given teacher counts 0).
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from common.artifacts import read_metrics

METRICS = ("zeroshot_top1", "zeroshot_top5", "i2t_R@1", "t2i_R@1")


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


def spread(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def group_runs(demo: Path) -> dict[str, list[Path]]:
    """{group: [run dirs, one per seed]} from folders named `<group>_seed<N>`."""
    groups: dict[str, list[Path]] = {}
    for path in sorted(demo.glob("*_seed*")):
        if (path / "metrics.jsonl").is_file():
            groups.setdefault(path.name.rsplit("_seed", 1)[0], []).append(path)
    return groups


GROUP_ORDER = ("init", "init_sigmoid", "scratch", "scratch_equal_student", "scratch_equal_total")


def compute_steps(group: str, steps: int, extra: dict[str, dict[str, Any]]) -> tuple[int, int]:
    """(student steps, total steps) of one run: an `--init` run adds stage 1 (student) and the teacher
    (total); a scratch run's own steps are both. A given teacher (no `teacher` run) counts 0."""
    if not group.startswith("init"):
        return steps, steps
    student = steps + int(extra.get("stage1", {}).get("steps", 0))
    return student, student + int(extra.get("teacher", {}).get("steps", 0))


def plot(demo: Path, groups: dict[str, list[Path]], extra: dict[str, Path]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, path in [*((p.name, p) for runs in groups.values() for p in runs), *extra.items()]:
        loss = curves(path)[0]
        if loss:
            ax.plot(*zip(*loss), label=name)
    ax.set(xlabel="step", ylabel="training loss", title="Loss curves (all runs)", yscale="log")
    ax.legend(fontsize=7)
    fig.savefig(demo / "loss_curves.png", dpi=110, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, runs in groups.items():
        if group == "init_sigmoid":
            continue
        for path in runs:
            points = [(s, e["zeroshot_top1"]) for s, e in curves(path)[1] if "zeroshot_top1" in e]
            if points:
                ax.plot(*zip(*points), marker="o", label=path.name, linestyle="-" if group == "init" else "--")
    ax.set(xlabel="stage-2 step", ylabel="zero-shot top-1", title="Zero-shot accuracy: --init vs scratch controls")
    ax.legend(fontsize=8)
    fig.savefig(demo / "zeroshot_vs_step.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    return ["loss_curves.png", "zeroshot_vs_step.png"]


def collect(demo: Path) -> dict[str, Any]:
    """results.json's content: one entry per group (lists over seeds), the teacher, stage 1, the export."""
    times = json.loads((demo / "step_times.json").read_text()) if (demo / "step_times.json").is_file() else {}
    results: dict[str, Any] = {}
    if (demo / "recipe.json").is_file():
        results["recipe"] = json.loads((demo / "recipe.json").read_text())
    extra = {name: dict(run_summary(demo / name), wall_s=round(times.get(name, 0.0), 1))
             for name in ("teacher", "stage1") if (demo / name / "metrics.jsonl").is_file()}
    groups = group_runs(demo)
    for group in sorted(groups, key=lambda g: (GROUP_ORDER + (g,)).index(g)):
        runs = groups[group]
        summaries = [run_summary(p) for p in runs]
        student, total = compute_steps(group, summaries[0]["steps"], extra)
        results[group] = {"runs": [p.name for p in runs], "steps": [s["steps"] for s in summaries],
                          "student_steps": student, "total_steps": total,
                          "final_loss": [s["final_loss"] for s in summaries],
                          "wall_s": [round(times.get(p.name, 0.0), 1) for p in runs]}
        for metric in METRICS:
            key = "zero_shot_top1" if metric == "zeroshot_top1" else metric  # results.json contract name
            results[group][key] = [s.get(metric) for s in summaries]
    results.update(extra)
    if (demo / "stage1_check.json").is_file():
        results["stage1_check"] = json.loads((demo / "stage1_check.json").read_text())
    if (demo / "export_eval.json").is_file():
        results["export_eval"] = json.loads((demo / "export_eval.json").read_text())
    return results


def main(argv: list[str] | None = None) -> int:
    demo = Path((argv or sys.argv[1:] or ["runs/demo"])[0])
    results = collect(demo)
    (demo / "results.json").write_text(json.dumps(results, indent=2))
    extra = {name: demo / name for name in ("teacher", "stage1") if name in results}
    images = plot(demo, group_runs(demo), extra)
    (demo / "report.md").write_text(report_markdown(results, images))
    print((demo / "report.md").read_text())
    return 0


def report_markdown(results: dict[str, Any], images: list[str]) -> str:
    source = results.get("recipe", {}).get("source", "the data")
    teacher = results.get("recipe", {}).get("teacher", "")
    lines = ["# evaclip recipe report", "", f"Source `{source}`; teacher: {teacher or 'see below'}. Zero-shot on "
             "the held-out split (mean ± std over seeds, %). Compute in training steps (same batch): stage 2 alone, "
             "the student's (stage 1 + stage 2) and the total (teacher + stage 1 + stage 2).", "",
             "| run | seeds | stage-2 steps | student steps | total steps | final loss | zero-shot top-1 | top-5 "
             "| i2t R@1 | t2i R@1 | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for group, r in results.items():
        if not isinstance(r, dict) or "runs" not in r:
            continue
        losses = [v for v in r["final_loss"] if v is not None]
        lines.append(f"| {group} | {len(r['runs'])} | {r['steps'][0]} | {r['student_steps']} | {r['total_steps']} | "
                     f"{statistics.fmean(losses):.3f} | "
                     f"{spread([v for v in r['zero_shot_top1'] if v is not None])} | "
                     f"{spread([v for v in r['zeroshot_top5'] if v is not None])} | "
                     f"{spread([v for v in r['i2t_R@1'] if v is not None])} | "
                     f"{spread([v for v in r['t2i_R@1'] if v is not None])} | "
                     f"{statistics.fmean(r['wall_s']):.0f} |")
    for name in ("teacher", "stage1"):
        if name in results:
            r = results[name]
            detail = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items())
            lines += ["", f"**{name}**: {detail}"]
    if "stage1_check" in results:
        c = results["stage1_check"]
        lines += ["", f"**stage 1 vs an image-blind predictor** (cosine to the teacher's targets at masked tokens): "
                  f"student {c['masked_cos']:.3f}, image-blind {c['image_blind_cos']:.3f}, gain {c['gain']:+.3f} "
                  f"(near 0: stage 1 learned the teacher's average, not the images); visible tokens "
                  f"{c['visible_cos']:.3f}; the probe on the teacher's own tokens {100 * c['teacher_token_probe_top1']:.1f} %"]
    if "export_eval" in results:
        lines += ["", f"**exported model through open_clip**: `{json.dumps(results['export_eval'])}`"]
    lines += [""] + [f"![{img}]({img})" for img in images]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
