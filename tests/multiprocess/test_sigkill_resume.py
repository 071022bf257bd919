"""A run killed with SIGKILL (its launcher's process group and every worker) resumes at its last checkpoint
to the same losses and weights as an uninterrupted run, on 1 process and on 2 under torchrun (the tiny linear
task, `tests.support.launch.LINEAR_RUN`)."""
from __future__ import annotations

import signal
import subprocess

import pytest

from common.artifacts import complete_checkpoints
from tests.support.launch import LINEAR_RUN, ROOT, STALL_AT_STEP_9, kill_when_logged, linear_run, subprocess_env
from tests.support.run_records import assert_resumed_exactly, losses, start_records


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, nproc, uninterrupted_linear_run):
    env = subprocess_env()
    full = uninterrupted_linear_run(nproc)
    killed = tmp_path / "killed"
    # stalled in step 9 on its last rank: killed after step 8, wherever the test is scheduled
    stalled = [*STALL_AT_STEP_9, f"stall_rank={nproc - 1}"]
    proc = subprocess.Popen(linear_run(nproc, killed, *LINEAR_RUN, *stalled), cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_logged(proc, killed, step=8)
    assert proc.returncode == -signal.SIGKILL or proc.returncode != 0
    assert complete_checkpoints(killed)[-1].name == "step_00000006"  # the step-9 one never completed
    subprocess.run(linear_run(nproc, killed, *LINEAR_RUN, "--resume", "auto"), cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    # the resumed processes began at step 6 with nproc ranks; steps 1..12 logged once, bit-identical (CPU fp32)
    assert_resumed_exactly(killed, full, from_step=6, world_size=nproc)
    assert len(losses(full)) == 12
    assert start_records(killed)[-1]["distributed_type"] == ("NO" if nproc == 1 else "MULTI_CPU")
