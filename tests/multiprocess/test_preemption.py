"""A preemption signal that reaches one rank of 2 gloo processes (the tiny linear task, `LINEAR_RUN`): every rank
checkpoints at one agreed step, exits 75 with one line, and the run resumes to the uninterrupted run bit for
bit (common/train/preemption.py)."""
from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from common.artifacts import complete_checkpoints, read_metrics
from common.train.preemption import REQUEUE_EXIT_STATUS
from tests.support.launch import LINEAR_RUN, ROOT, linear_run, spawn_ranks, subprocess_env, wait_until_logged
from tests.support.run_records import assert_resumed_exactly

pytestmark = pytest.mark.slow


def test_a_preemption_signal_on_one_rank_checkpoints_every_rank_at_one_step_and_resumes_exactly(
        tmp_path, uninterrupted_linear_run):
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    # rank 0 sleeps 5 s inside step 8: the signal sent after step 7 lands in step 8 however late the test runs
    ranks = spawn_ranks(2, logs, "tests.support.tasks.linear_task", str(run_dir), *LINEAR_RUN, "stall_at_step=8",
                        "stall_rank=0", "stall_s=5")
    wait_until_logged(run_dir, 7, ranks)
    ranks[1].send_signal(signal.SIGUSR1)  # SLURM's warning: reaches rank 1 only; rank 0 learns it by the vote
    assert [p.wait(timeout=120) for p in ranks] == [REQUEUE_EXIT_STATUS] * 2
    stopped = [r for r in read_metrics(run_dir) if r.get("event") == "preempted"]
    assert len(stopped) == 1 and stopped[0]["signal"] == "SIGUSR1"
    step = stopped[0]["step"]
    assert 7 <= step < 12 and step % 3, f"preempted at {step}: its checkpoint must be its own, not a periodic one"
    assert complete_checkpoints(run_dir)[-1].name == f"step_{step:08d}" == Path(stopped[0]["checkpoint"]).name
    for rank in (0, 1):
        lines = (logs / f"rank{rank}.err").read_text().strip().splitlines()
        assert lines[-1].startswith(f"preempted: stopped at step {step} on SIGUSR1: checkpoint "), lines[-3:]
    resumed = subprocess.run(linear_run(2, run_dir, *LINEAR_RUN, "--resume", "auto"), cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_resumed_exactly(run_dir, uninterrupted_linear_run(2), from_step=step, world_size=2)
