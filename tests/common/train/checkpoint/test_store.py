"""common/train/checkpoint/store.py, what a checkpoint holds: the LR schedule in the JSON marker, no object
registered with accelerate for checkpointing (accelerate would unpickle it with weights_only=False)."""
from __future__ import annotations

from common.artifacts import EngineState


def test_the_lr_schedule_is_kept_in_the_json_marker_not_in_a_pickle(linear_checkpoint):
    # accelerate saves objects registered for checkpointing as custom_checkpoint_*.pkl and loads them with
    # weights_only=False: the engine registers none (the scheduler's state is in engine_state.json)
    assert not list(linear_checkpoint.glob("custom_checkpoint_*"))
    assert EngineState.read(linear_checkpoint).scheduler["last_epoch"] == 2
