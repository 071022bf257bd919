"""stage2_contrastive/train.py, the stage-2 command: input it cannot run on is one line on stderr and exit
status 2."""
from __future__ import annotations

import pytest

from stage2_contrastive.train import main
from tests.support.tiny import STAGE2_CONFIG

CONFIG = STAGE2_CONFIG


@pytest.mark.parametrize("override, message", [
    ("loss=hinge", "use one of: 'softmax', 'sigmoid'"),
    ("data.train_shards=/nonexistent/shards", "no shards match"),
    ("model.text.vocab_size=1000", "does not match the CLIP BPE tokenizer"),
    ("data.image_size=30", "not divisible by the patch size 14"),
])
def test_bad_input_is_one_line_error(stage2_overrides, capsys, override, message):
    assert main(["--config", CONFIG, *stage2_overrides, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_zero_stage_that_does_not_exist_is_one_line_error(stage2_overrides, capsys, tmp_path):
    ds = tmp_path / "zero5.json"
    ds.write_text('{"zero_optimization": {"stage": 5}}')
    assert main(["--config", CONFIG, *stage2_overrides, f"train.deepspeed={ds}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ZeRO stage 5" in err and "use 0, 1, 2 or 3" in err and len(err.splitlines()) == 1
