"""Fixtures of the engine and checkpoint tests: runs of the tiny linear task (tests/support/tasks/linear_task.py)
made once per test process."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.artifacts import complete_checkpoints
from tests.support.tasks.linear_task import CHECKPOINTED_RUN, run_linear


@pytest.fixture(scope="session")
def linear_reference(tmp_path_factory) -> Path:
    """The uninterrupted `CHECKPOINTED_RUN` every recovery must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_linear(out, *CHECKPOINTED_RUN)
    return out


@pytest.fixture(scope="session")
def linear_checkpoint(tmp_path_factory) -> Path:
    """The checkpoint of a 2-step linear run."""
    out = tmp_path_factory.mktemp("linear") / "run"
    run_linear(out, "train.steps=2")
    return complete_checkpoints(out)[-1]
