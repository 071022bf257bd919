"""The demo chain in miniature (teacher → stage 1 → stage 2 --init / scratch → export → open_clip eval →
report): proves the steps fit together. Marked slow (~2.5 min on 2 cores)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launch import ROOT, subprocess_env

pytestmark = pytest.mark.slow


def test_quick_demo_runs_end_to_end(tmp_path):
    out, data = tmp_path / "demo", tmp_path / "data"
    cmd = [sys.executable, "scripts/demo.py", "--quick", "--out", str(out), "--data", str(data), "--seeds", "0", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    for group in ("init", "scratch", "init_sigmoid"):
        top1 = results[group]["zero_shot_top1"]
        assert len(top1) == 2 and all(0.0 <= v <= 1.0 for v in top1)
    assert results["stage1"]["steps"] == 3 and "probe_top1" in results["stage1"]
    export = results["export_eval"]
    assert export["n"] == 128 and export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)
    for name in ("report.md", "loss_curves.png", "zeroshot_vs_step.png", "export/open_clip_config.json"):
        assert (out / name).is_file(), name
