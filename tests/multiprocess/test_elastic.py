"""torchrun's elastic restart (common/train/elastic.py): a worker of 2 SIGKILLed, torchrun restarts the group,
which resumes from the last checkpoint and finishes bit for bit like the uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

from tests.support.launch import LINEAR_RUN, ROOT, STALL_AT_STEP_9, free_port, subprocess_env, wait_until_logged
from tests.support.run_records import assert_resumed_exactly

pytestmark = pytest.mark.slow


def test_torchrun_restarts_a_group_whose_worker_was_sigkilled_from_the_last_checkpoint_exactly(
        tmp_path, uninterrupted_linear_run):
    run_dir = tmp_path / "run"
    # c10d rendezvous, as scripts/launch/slurm_stage2.sbatch uses it: each restart is a new rendezvous round;
    # one restart allowed, so it must work the first time (common/train/elastic.py: without its per-round
    # store prefix, most restart rounds here failed to connect their new gloo group)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           "--monitor-interval=0.5", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}",
           "--rdzv-id=elastic", "-m", "tests.support.tasks.linear_task", str(run_dir), *LINEAR_RUN,
           *STALL_AT_STEP_9, "--resume", "auto"]  # the first round stalls in step 9: the kill comes before it
    log = tmp_path / "torchrun.log"  # a file, not a pipe nobody drains: a full pipe would block the workers
    with log.open("w") as out:
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_logged(run_dir, 8, [launcher])
        worker = psutil.Process(launcher.pid).children()[1]
        os.kill(worker.pid, signal.SIGKILL)  # one worker dies (a node fault); torchrun restarts the group
        assert launcher.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if launcher.poll() is None:  # a failed restart must not leave its workers behind
            for process in psutil.Process(launcher.pid).children(recursive=True):
                process.kill()
            launcher.kill()
    assert_resumed_exactly(run_dir, uninterrupted_linear_run(2), from_step=6, world_size=2)
