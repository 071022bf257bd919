"""Summarise the demo's runs: `runs/demo/results.json`, `report.md` and PNG plots (headless matplotlib).

`python scripts/demo_report.py runs/demo` reads each run's `metrics.jsonl`, the demo's `step_times.json`
and `export_eval.json`, and reports per group (init / scratch / init_sigmoid ...) the per-seed values
with mean and spread.
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


def plot(demo: Path, groups: dict[str, list[Path]], extra: dict[str, Path]) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, path in [*((p.name, p) for runs in groups.values() for p in runs), *extra.items()]:
        loss = curves(path)[0]
        if loss:
            ax.plot(*zip(*loss), label=name)
    ax.set(xlabel="step", ylabel="training loss", title="Loss curves (all demo runs)", yscale="log")
    ax.legend(fontsize=7)
    fig.savefig(demo / "loss_curves.png", dpi=110, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(8, 5))
    for group in ("init", "scratch"):
        for path in groups.get(group, []):
            points = [(s, e["zeroshot_top1"]) for s, e in curves(path)[1] if "zeroshot_top1" in e]
            if points:
                ax.plot(*zip(*points), marker="o", label=path.name, linestyle="-" if group == "init" else "--")
    ax.set(xlabel="stage-2 step", ylabel="zero-shot top-1", title="Zero-shot accuracy: --init vs scratch")
    ax.legend(fontsize=8)
    fig.savefig(demo / "zeroshot_vs_step.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    return ["loss_curves.png", "zeroshot_vs_step.png"]


def main(argv: list[str] | None = None) -> int:
    demo = Path((argv or sys.argv[1:] or ["runs/demo"])[0])
    times = json.loads((demo / "step_times.json").read_text()) if (demo / "step_times.json").is_file() else {}
    groups = group_runs(demo)
    results: dict[str, Any] = {}
    for group, runs in groups.items():
        summaries = [run_summary(p) for p in runs]
        results[group] = {"runs": [p.name for p in runs], "steps": [s["steps"] for s in summaries],
                          "final_loss": [s["final_loss"] for s in summaries],
                          "wall_s": [round(times.get(p.name, 0.0), 1) for p in runs]}
        for metric in METRICS:
            key = "zero_shot_top1" if metric == "zeroshot_top1" else metric  # results.json contract name
            results[group][key] = [s.get(metric) for s in summaries]
    extra = {name: demo / name for name in ("teacher", "stage1") if (demo / name / "metrics.jsonl").is_file()}
    for name, path in extra.items():
        results[name] = dict(run_summary(path), wall_s=round(times.get(name, 0.0), 1))
    if (demo / "export_eval.json").is_file():
        results["export_eval"] = json.loads((demo / "export_eval.json").read_text())
    (demo / "results.json").write_text(json.dumps(results, indent=2))
    images = plot(demo, groups, extra)
    (demo / "report.md").write_text(report_markdown(results, images))
    print((demo / "report.md").read_text())
    return 0


def report_markdown(results: dict[str, Any], images: list[str]) -> str:
    lines = ["# evaclip demo report", "", "Zero-shot on the Fashion-MNIST test split (mean ± std over seeds, %).", "",
             "| run | seeds | steps | final loss | zero-shot top-1 | top-5 | i2t R@1 | t2i R@1 | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for group, r in results.items():
        if "runs" not in r:
            continue
        losses = [v for v in r["final_loss"] if v is not None]
        lines.append(f"| {group} | {len(r['runs'])} | {r['steps'][0]} | {statistics.fmean(losses):.3f} | "
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
    if "export_eval" in results:
        lines += ["", f"**exported model through open_clip**: `{json.dumps(results['export_eval'])}`"]
    lines += [""] + [f"![{img}]({img})" for img in images]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
