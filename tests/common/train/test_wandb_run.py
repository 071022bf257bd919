"""`train.wandb` (common/train/wandb_run.py): an offline wandb run holds the same scalars as metrics.jsonl,
and a resumed run appends to the same wandb run. Offline: no network."""
from __future__ import annotations

import pytest

from common.artifacts import WANDB_ID_FILE, read_metrics
from common.train.preemption import Preempted
from tests.support.tasks.linear_task import run_linear
from tests.support.tasks.wandb_records import history, offline_runs

WANDB = ["train.wandb.mode=offline", "train.wandb.project=evaclip-tests", "train.log_every=1"]


def test_offline_wandb_holds_the_runs_scalars_and_a_resume_continues_the_same_run(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(Preempted):
        run_linear(out, *WANDB, "train.steps=6", "train.save_every=2", "signal_at_step=3")
    run_linear(out, *WANDB, "train.steps=6", "train.save_every=2", resume="auto")
    run_id = (out / WANDB_ID_FILE).read_text().strip()
    runs = offline_runs(out)
    assert len(runs) == 2, runs  # the first process and the resumed one
    rows = []
    for path in runs:
        logged_id, logged = history(path)
        assert logged_id == run_id
        rows += logged
    wandb_losses = {row["_step"]: row["loss"] for row in rows if "loss" in row}
    jsonl_losses = {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}
    assert wandb_losses == pytest.approx(jsonl_losses) and sorted(jsonl_losses) == list(range(1, 7))
    assert {"lr", "samples_per_s", "grad_norm"} <= set().union(*rows)


def test_an_unknown_mode_or_a_missing_project_is_a_one_line_error():
    from common.config.schema import load_config
    from common.errors import ConfigError
    from tests.support.tasks.linear_task import LinearConfig
    with pytest.raises(ConfigError, match="train.wandb.mode.*use one of: 'disabled', 'online', 'offline'"):
        load_config(LinearConfig, None, ["train.wandb.mode=cloud"])
    with pytest.raises(ConfigError, match="needs train.wandb.project"):
        load_config(LinearConfig, None, ["train.wandb.mode=offline"])
