"""common/train/preemption.py in one process (the tiny linear task): SIGTERM checkpoints at that step, exits 75
with one line, restores the signal handler, and the run resumes exactly. (A signal on one of 2 ranks:
tests/multiprocess/test_preemption.py.)"""
from __future__ import annotations

import signal

from common.artifacts import complete_checkpoints
from common.train.preemption import REQUEUE_EXIT_STATUS
from tests.support.run_records import assert_resumed_exactly
from tests.support.tasks import linear_task
from tests.support.tasks.linear_task import CHECKPOINTED_RUN


def test_sigterm_checkpoints_at_that_step_exits_75_and_resumes_exactly(linear_reference, tmp_path, capsys):
    out = tmp_path / "run"
    assert linear_task.main([str(out), *CHECKPOINTED_RUN, "signal_at_step=3"]) == REQUEUE_EXIT_STATUS
    assert capsys.readouterr().err.strip() == (f"preempted: stopped at step 3 on SIGTERM: checkpoint "
                                               f"{out / 'checkpoints' / 'step_00000003'} written — requeue the "
                                               "same command with --resume auto (exit status 75)")
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000003"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the engine's handler is gone with the run
    assert linear_task.main([str(out), *CHECKPOINTED_RUN, "--resume", "auto"]) == 0
    # step 3 is no periodic checkpoint: the resumed stream is the one started at step 2, moved on by a step
    assert_resumed_exactly(out, linear_reference, from_step=3)
