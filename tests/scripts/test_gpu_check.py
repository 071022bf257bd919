"""scripts/gpu_check.sh on a machine without CUDA: the preflight (offline imports, data) passes and the
script stops where CUDA is needed with a SKIP line naming why, exit status 0. Its GPU pytest step
(`--pytest-only`, here on stand-in test files) fails when a selected test skips."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

from tests.support.launch import ROOT

pytestmark = pytest.mark.slow


def gpu_check(out, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPU_CHECK_OUT": str(out)}
    return subprocess.run(["bash", "scripts/gpu_check.sh", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the whole scripts/gpu_check.sh")
def test_gpu_check_runs_to_the_cuda_point_and_skips_clearly(tmp_path):
    proc = gpu_check(tmp_path / "gpu_check")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "SKIP: torch.cuda.is_available() is False" in proc.stdout
    summary = json.loads((tmp_path / "gpu_check" / "summary.json").read_text())
    assert summary["status"] == "skipped"
    assert summary["steps"] and all(s["rc"] == 0 for s in summary["steps"])
    assert (ROOT / "data" / "gpu_check" / "classnames.txt").is_file()


RUNS = "def test_runs():\n    assert 1 + 1 == 2\n"
SKIPS = "import pytest\n\n\ndef test_skips():\n    pytest.skip('no CUDA device here')\n"


@pytest.mark.parametrize("tests, rc, status", [((RUNS,), 0, "passed"), ((RUNS, SKIPS), 3, "failed")],
                         ids=["all_ran", "one_skipped"])
def test_gpu_pytest_step_fails_when_a_test_skips(tmp_path, tests, rc, status):
    for i, source in enumerate(tests):
        (tmp_path / f"test_stand_in_{i}.py").write_text(source)
    proc = gpu_check(tmp_path / "gpu_check", "--pytest-only", str(tmp_path))
    assert proc.returncode == (rc != 0), proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check" / "summary.json").read_text())
    assert summary["status"] == status
    assert [(s["step"], s["rc"]) for s in summary["steps"]] == [("gpu_tests", rc)]
    if rc:
        assert "FAILED (rc 3)" in proc.stdout
        assert "test_skips: Skipped: no CUDA device here" in proc.stdout
