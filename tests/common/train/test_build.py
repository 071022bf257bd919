"""common/train/build.py, building a run: a task without `contrastive_group` (a per-sample loss) refuses
`train.contrastive_accum` > 1 with one line naming train.grad_accum."""
from __future__ import annotations

import pytest

from common.config.schema import load_config
from common.errors import ConfigError
from common.train.engine import train
from tests.support.tasks.stream_task import StreamConfig, StreamTask


def test_a_per_sample_task_refuses_contrastive_accumulation(tmp_path):
    cfg = load_config(StreamConfig, None, [f"train.output_dir={tmp_path}", "train.contrastive_accum=2"])
    with pytest.raises(ConfigError, match="train.contrastive_accum=2.*use train.grad_accum"):
        train(cfg, lambda run: StreamTask(cfg, run))
