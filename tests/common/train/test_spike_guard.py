"""The loss-spike guard (common/train/spike_guard.py and the engine's rollback): an injected finite spike —
one batch whose targets are × 1000 — is found, the run rolls back to its newest checkpoint, trains the
steps again on a stream re-seeded past the spike, logs the skipped window, and finishes."""
from __future__ import annotations

import pytest

from common.config.schema import load_config
from common.errors import ConfigError
from common.train.spike_guard import LossSpikeError
from tests.support.tasks.operated_task import OperatedConfig, run_operated

# checkpoints at 10 and 20; the stream restarted at step 10 holds the poison as its 7th batch: step 17
RUN = ["train.steps=30", "train.save_every=10", "train.log_every=5", "train.keep_last=3",
       "train.spike.window=5", "train.spike.factor=5", "poison_stream_step=10", "poison_batch=6"]


def test_a_spike_rolls_back_once_skips_its_window_and_the_run_finishes(tmp_path):
    """Mutation: the guard off (train.spike.action=none, or `judge` never firing) → no rollback record, and
    the spike's step is trained: this test fails."""
    records = run_operated(tmp_path / "run", *RUN, "train.spike.action=rollback")
    rollbacks = [r for r in records if r.get("event") == "rollback"]
    assert len(rollbacks) == 1, rollbacks
    event = rollbacks[0]
    assert event["spike_step"] == 17 and event["skipped_steps"] == [11, 17] and event["step"] == 10
    assert event["data_seed_step"] == 17 and event["checkpoint"].endswith("step_00000010")
    assert event["spike_loss"] > 5 * event["median"]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(5, 31, 5)), steps  # each logged step once: the discarded ones are dropped
    assert max(r["loss"] for r in records if "loss" in r) < event["spike_loss"] / 10  # the spike's step was not kept


def test_without_the_guard_the_spikes_step_is_trained(tmp_path):
    records = run_operated(tmp_path / "run", *RUN, "train.spike.action=none")
    assert not [r for r in records if r.get("event") == "rollback"]
    logged = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert logged[20] > 100 * logged[10]  # the poisoned step 17 is in the window of steps 16-20


def test_warn_logs_the_spike_and_trains_on(tmp_path, caplog):
    records = run_operated(tmp_path / "run", *RUN, "train.spike.action=warn")
    assert not [r for r in records if r.get("event") == "rollback"]
    assert any("loss spike at step 17" in m for m in caplog.messages)


def test_a_spike_after_max_rollbacks_stops_the_run_in_one_line(tmp_path):
    with pytest.raises(LossSpikeError, match=r"loss spike at step 17.*after 0 rollbacks \(train.max_rollbacks\)"):
        run_operated(tmp_path / "run", *RUN, "train.spike.action=rollback", "train.max_rollbacks=0")


@pytest.mark.parametrize("override, message", [
    ("train.spike.factor=1", "can never fire or fires on ordinary steps"),
    ("train.spike.factor=.inf", "can never fire or fires on ordinary steps"),
    ("train.spike.window=30", "the rollback rule can never fire"),
    ("train.save_every=0", "saves none before the end"),
])
def test_a_rule_that_never_or_always_fires_is_a_one_line_error(override, message):
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(OperatedConfig, None, [*RUN, "train.spike.action=rollback", override])
    assert "\n" not in str(refused.value)
