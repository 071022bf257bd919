"""common/artifacts.py, the run folder's map: a weights file knows its run folder and the step it holds, in a
checkpoint or at the run's top level. (config.yaml round trips: tests/common/config/test_schema.py.)"""
from __future__ import annotations

from common.artifacts import EngineState, checkpoint_dir, checkpoint_weights_dir, run_folder_of, weights_step


def test_weights_belong_to_their_run_and_step(tmp_path):
    step_3 = checkpoint_dir(tmp_path / "r", 3)
    step_3.mkdir(parents=True)
    EngineState(3).write(step_3)
    in_checkpoint = checkpoint_weights_dir(step_3) / "model.safetensors"
    assert run_folder_of(in_checkpoint) == tmp_path / "r"
    assert weights_step(in_checkpoint) == weights_step(tmp_path / "r" / "model.safetensors") == 3
