"""The recipe report's plots (headless matplotlib), drawn from what `demo_report.py` read: loss curves and
zero-shot vs step of one caption count's runs; zero-shot vs caption count N (the crossover)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

Curves = tuple[list[tuple[int, float]], list[tuple[int, dict]]]  # ([(step, loss)], [(step, eval record)])
Arm = tuple[float, float]                                        # (mean, std) of top-1 over seeds, in [0, 1]


def _pyplot() -> Any:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def run_plots(demo: Path, runs: list[tuple[Optional[str], str, Curves]]) -> list[str]:
    """`loss_curves.png` (every run) and `zeroshot_vs_step.png` (the grouped runs but the sigmoid ones) in
    `demo`; `runs`: (group or None for a shared run, run name, its curves)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for _, name, (loss, _) in runs:
        if loss:
            ax.plot(*zip(*loss), label=name)
    ax.set(xlabel="step", ylabel="training loss", title="Loss curves (all runs)", yscale="log")
    ax.legend(fontsize=7)
    fig.savefig(demo / "loss_curves.png", dpi=110, bbox_inches="tight")
    fig, ax = plt.subplots(figsize=(8, 5))
    for group, name, (_, evals) in runs:
        if group is None or group == "init_sigmoid":
            continue
        points = [(s, e["zeroshot_top1"]) for s, e in evals if "zeroshot_top1" in e]
        if points:
            ax.plot(*zip(*points), marker="o", label=name, linestyle="-" if group == "init" else "--")
    ax.set(xlabel="stage-2 step", ylabel="zero-shot top-1", title="Zero-shot accuracy: --init vs scratch controls")
    ax.legend(fontsize=8)
    fig.savefig(demo / "zeroshot_vs_step.png", dpi=110, bbox_inches="tight")
    plt.close("all")
    return ["loss_curves.png", "zeroshot_vs_step.png"]


def crossover_plot(demo: Path, arms: dict[str, tuple[Arm, Arm]], own: Optional[float], source: str,
                   name: str = "zeroshot_vs_captions.png") -> str:
    """Zero-shot top-1 (%) vs caption count N (log axis; 'all' drawn at 4× the largest N), `--init` and the
    equal-student control (`arms`: {count label: (init, control)}) with their seed spread, and the teacher's
    own score `own` as a line. Returns `name`."""
    plt = _pyplot()
    total = max((int(label) for label in arms if label != "all"), default=1) * 4
    xs = {label: total if label == "all" else int(label) for label in arms}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, arm in enumerate(("--init from stage 1", "scratch, equal student compute")):
        stats = [arms[label][i] for label in arms]
        ax.errorbar(list(xs.values()), [100 * m for m, _ in stats], yerr=[100 * s for _, s in stats], marker="o",
                    capsize=4, label=arm)
    if own is not None:
        ax.axhline(100 * own, color="gray", linestyle=":", label=f"teacher's own ({100 * own:.1f} %)")
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis' minor labels (3×10², …) would overlap the caption counts
    ax.set_xticks(list(xs.values()), list(xs))
    ax.set(xlabel="caption pairs N for stage 2 ('all': every pair)", ylabel="zero-shot top-1 (%)",
           title=f"{source}: --init vs scratch at equal student compute")
    ax.legend(fontsize=8)
    fig.savefig(demo / name, dpi=110, bbox_inches="tight")
    plt.close("all")
    return name
