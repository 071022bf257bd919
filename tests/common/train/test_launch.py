"""`evaclip-torchrun` (common/train/launch.py): where it looks for the run's preempted event. Its launches:
tests/multiprocess/test_launch.py."""
from __future__ import annotations

from pathlib import Path

import pytest


def test_the_run_folder_is_the_training_commands_output_dir():
    from common.train.launch import run_dir_of
    assert run_dir_of(["--nproc_per_node=8", "-m", "stage2_contrastive.train", "--config",
                       "configs/stage2/fmnist_tiny.yaml", "train.output_dir=runs/x"]) == Path("runs/x")


def test_a_module_that_is_not_a_stage_needs_run_dir():
    from common.train.launch import run_dir_of
    with pytest.raises(SystemExit, match="pass --run-dir DIR"):
        run_dir_of(["--nproc_per_node=2", "-m", "tests.support.tasks.linear_task", "out"])
