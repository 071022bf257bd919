"""common/train/cli.py, the command line both stages share: flags and `key=value` overrides in any order, and
every error it can foresee is one line on stderr with exit status 2 (never a traceback)."""
from __future__ import annotations

import pytest

from common.train.cli import parse_cli
from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main
from tests.support.tiny import STAGE1_CONFIG, STAGE2_CONFIG, one_line_error

CONFIG = STAGE2_CONFIG


def test_flags_and_overrides_mix_in_any_order():
    args = parse_cli(["--config", "c.yaml", "train.steps=3", "--init", "run1", "loss=sigmoid",
                      "--resume", "auto", "data.image_size=56"], "d")
    assert (args.config, args.init, args.resume) == ("c.yaml", "run1", "auto")
    assert args.overrides == ["train.steps=3", "loss=sigmoid", "data.image_size=56"]



def test_cli_has_the_three_named_flags():
    args = parse_cli(["--config", "a.yaml", "--init", "s1", "--resume", "auto", "x.y=1"], "d")
    assert (args.config, args.init, args.resume, args.overrides) == ("a.yaml", "s1", "auto", ["x.y=1"])

def test_init_that_names_nothing_is_one_line(stage2_overrides, tmp_path, capsys):
    assert stage2_main(["--config", CONFIG, *stage2_overrides, "--init", str(tmp_path / "no_run"),
                        "train.steps=1"]) == 2
    assert "--init" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()  # refused before a run folder was made


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message of a machine without CUDA")
@pytest.mark.parametrize("main, key", [(stage2_main, "model.attention"), (stage1_main, "student.attention")])
def test_xformers_without_cuda_is_one_line_at_load_time(stage2_overrides, capsys, main, key):
    config = CONFIG if main is stage2_main else STAGE1_CONFIG
    extra = stage2_overrides if main is stage2_main else ["teacher.model=local-dir:/nowhere"]
    assert main(["--config", config, *extra, f"{key}=xformers"]) == 2
    assert "attention backend 'xformers' cannot run here" in one_line_error(capsys)


def test_too_little_data_for_one_contrastive_batch_is_one_line(stage2_overrides, capsys):
    assert stage2_main(["--config", CONFIG, *stage2_overrides, "train.batch_size=100000"]) == 2
    assert "fewer than one contrastive batch" in one_line_error(capsys)
