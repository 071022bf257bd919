"""The shared engine on 2 real gloo processes under torchrun (the tiny linear task): both ranks see a world of
2 and a process group of 2, and the run logs every step once."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.run_records import losses


@pytest.mark.slow
def test_two_gloo_processes_really_run(tmp_path):
    cmd = torchrun(2, "tests.support.tasks.linear_task", str(tmp_path), "train.steps=6")
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / f"world_rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["world"] for s in seen] == [2, 2] and [s["dist"] for s in seen] == [2, 2]
    assert len(losses(tmp_path)) == 6
