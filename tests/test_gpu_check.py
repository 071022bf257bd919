"""scripts/gpu_check.sh on a machine without CUDA: the preflight (offline imports, data) passes and the
script stops where CUDA is needed with a SKIP line naming why, exit status 0."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.launch import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the whole scripts/gpu_check.sh")
def test_gpu_check_runs_to_the_cuda_point_and_skips_clearly(tmp_path):
    env = {**os.environ, "GPU_CHECK_OUT": str(tmp_path / "gpu_check")}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SKIP: torch.cuda.is_available() is False" in proc.stdout
    summary = json.loads((tmp_path / "gpu_check" / "summary.json").read_text())
    assert summary["status"] == "skipped"
    assert summary["steps"] and all(s["rc"] == 0 for s in summary["steps"])
    assert (ROOT / "data" / "gpu_check" / "classnames.txt").is_file()
