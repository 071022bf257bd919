"""`evaclip-torchrun` (common/train/launch.py), the documented torchrun launch: 2 processes of stage 2, one
worker SIGTERMed (as a scheduler preempting one node's process does), end with exit status 75 — torchrun
alone ends with 1 — and a worker that raises ends with a failure status that is not 75."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.artifacts import complete_checkpoints, read_metrics
from common.train.preemption import REQUEUE_EXIT_STATUS
from tests.support.launch import ROOT, free_port, subprocess_env
from tests.support.tiny import TINY_STAGE2

pytestmark = pytest.mark.slow
TORCHRUN = ["--nproc_per_node=2", "--master_addr=127.0.0.1"]


def launcher(*args: str) -> list[str]:
    """The wrapper as the README runs it (`evaclip-torchrun` is this module's console script)."""
    return [sys.executable, "-m", "common.train.launch", *args]


def workers(proc: subprocess.Popen, module: str) -> list[psutil.Process]:
    return [p for p in psutil.Process(proc.pid).children(recursive=True) if module in " ".join(p.cmdline())
            and "torch.distributed.run" not in " ".join(p.cmdline())]


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while max((r["step"] for r in read_metrics(run_dir) if "loss" in r), default=0) < step:
        assert proc.poll() is None, "the run ended before the signal could be sent"
        assert time.monotonic() < deadline, "the run never reached the step of the signal"
        time.sleep(0.05)


def test_a_preempted_stage2_run_under_the_launcher_exits_75(fmnist_shards, tmp_path):
    """Mutation: the launcher returning torchrun's own status → 1, and this test fails."""
    run_dir = tmp_path / "run"
    args = ["--config", "configs/stage2/fmnist_tiny.yaml", *TINY_STAGE2, f"data.train_shards={fmnist_shards / 'train'}",
            f"data.eval_shards={fmnist_shards / 'test'}", f"train.output_dir={run_dir}", "train.steps=200",
            "train.batch_size=4", "--resume", "auto"]
    proc = subprocess.Popen(launcher(*TORCHRUN, f"--master_port={free_port()}", "-m", "stage2_contrastive.train",
                                     *args), cwd=ROOT, env=subprocess_env(), stderr=subprocess.PIPE, text=True)
    wait_for_step(run_dir, 3, proc)
    workers(proc, "stage2_contrastive.train")[1].send_signal(signal.SIGTERM)  # one worker only
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == REQUEUE_EXIT_STATUS, err[-2000:]
    stopped = [r for r in read_metrics(run_dir) if r.get("event") == "preempted"]
    assert len(stopped) == 1 and Path(stopped[0]["checkpoint"]) == complete_checkpoints(run_dir)[-1]
    assert "requeue with --resume auto" in err


def test_a_worker_that_raises_ends_the_launch_with_a_failure_that_is_not_75(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run(launcher("--run-dir", str(run_dir), *TORCHRUN, f"--master_port={free_port()}", "-m",
                                   "tests.support.tasks.linear_task", str(run_dir), "train.steps=6", "crash_at_step=3"),
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode not in (0, REQUEUE_EXIT_STATUS), proc.stderr[-2000:]
    assert "injected crash at step 3" in proc.stderr
