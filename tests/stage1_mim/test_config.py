"""stage1_mim/config.py: a stage-1 config without a teacher is a one-line error."""
from __future__ import annotations

from stage1_mim.train import main as stage1_main
from tests.support.tiny import STAGE1_CONFIG

STAGE1 = STAGE1_CONFIG


def test_missing_teacher_is_a_one_line_error(fmnist_shards, tmp_path, capsys):
    assert stage1_main(["--config", STAGE1, f"train.output_dir={tmp_path}"]) == 2
    assert "teacher.model is not set" in capsys.readouterr().err
