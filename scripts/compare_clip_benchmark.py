"""Zero-shot accuracy of one exported model on one set by evaclip's own eval and by clip_benchmark, side by
side, both reading the same files: a set in clip_benchmark's webdataset layout as scripts/make_shards.py
writes it with `--layout clip_benchmark` (ROOT/test/0.tar …, ROOT/test/nshards.txt, ROOT/classnames.txt,
ROOT/zeroshot_classification_templates.txt).

    python scripts/compare_clip_benchmark.py --model local-dir:EXPORT --set ROOT \\
        --clip-benchmark /path/to/venv/bin/clip_benchmark

clip_benchmark is not a dependency of evaclip (its pins clash with this environment's); install it in a
venv of its own that also sees this environment's packages. It runs exactly as a user would run it:
`clip_benchmark eval --dataset wds/NAME --dataset_root ROOT --task zeroshot_classification
--model local-dir:EXPORT --pretrained "" --no_amp` (fp32, as evaclip's eval). Prints one JSON line; exit
status 1 when the top-1 accuracies differ by more than --tolerance.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.eval_zeroshot import main as evaclip_eval


def clip_benchmark_metrics(command: str, model: str, root: Path, batch_size: int) -> dict[str, float]:
    """clip_benchmark's zero-shot classification of `model` on the wds set at `root`: its metrics dict."""
    with tempfile.TemporaryDirectory() as tmp:
        output = Path(tmp) / "metrics.json"
        args = [command, "eval", "--dataset", f"wds/{root.name}", "--dataset_root", str(root), "--task",
                "zeroshot_classification", "--model", model, "--pretrained", "", "--no_amp", "--batch_size",
                str(batch_size), "--num_workers", "0", "--output", str(output)]
        proc = subprocess.run(args, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"clip_benchmark failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
        return json.loads(output.read_text())["metrics"]


def evaclip_metrics(model: str, root: Path, batch_size: int) -> dict[str, float]:
    """scripts/eval_zeroshot.py on ROOT/test (class names and templates from ROOT), its JSON line parsed."""
    import contextlib
    import io
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = evaclip_eval(["--model", model, "--data", str(root / "test"), "--batch-size", str(batch_size),
                             "--workers", "0"])
    if code != 0:
        raise RuntimeError(f"scripts/eval_zeroshot.py failed with status {code}")
    return json.loads(out.getvalue().strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="local-dir:EXPORT (scripts/export_open_clip.py)")
    parser.add_argument("--set", required=True, type=Path, help="ROOT of a set in clip_benchmark's wds layout")
    parser.add_argument("--clip-benchmark", default="clip_benchmark", help="the clip_benchmark command to run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=1e-9, help="largest top-1 difference accepted")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ours = evaclip_metrics(args.model, args.set, args.batch_size)
    middle = time.perf_counter()
    theirs = clip_benchmark_metrics(args.clip_benchmark, args.model, args.set, args.batch_size)
    result = {"model": args.model, "set": str(args.set), "n": ours["n"],
              "evaclip_top1": ours["zeroshot_top1"], "clip_benchmark_top1": theirs["acc1"],
              "evaclip_top5": ours["zeroshot_top5"], "clip_benchmark_top5": theirs["acc5"],
              "top1_difference": abs(ours["zeroshot_top1"] - theirs["acc1"]),
              "evaclip_s": round(middle - start, 1), "clip_benchmark_s": round(time.perf_counter() - middle, 1)}
    print(json.dumps(result))
    return 0 if result["top1_difference"] <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
