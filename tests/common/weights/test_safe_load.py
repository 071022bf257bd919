"""common/weights/safe_load.py: files from elsewhere load tensors only. A pickle that would run code when loaded
(here: create a marker folder) is refused with one line and exit status 2 wherever a user hands evaclip a
weights file — `--init`, `model.text.weights`, `teacher.weights` and a `local-dir:` teacher — and the marker is
never created. (Checkpoint pickles at `--resume`: tests/common/train/checkpoint/test_resume.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest

from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main
from tests.support.payloads import poison
from tests.support.tiny import STAGE1_CONFIG, STAGE2_CONFIG, one_line_error


def assert_refused(capsys, path: Path, marker: Path) -> None:
    assert f"'{path}' would import os.makedirs — refused" in one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["--init", "model.text.weights"])
def test_stage2_weights_from_elsewhere_that_would_run_code_are_refused(stage2_overrides, tmp_path, capsys, where):
    marker, file = tmp_path / "payload_ran", tmp_path / "weights.bin"
    poison(file, marker)
    flag = ["--init", str(file)] if where == "--init" else [f"model.text.weights={file}"]
    assert stage2_main(["--config", STAGE2_CONFIG, *stage2_overrides, "train.steps=1", *flag]) == 2
    assert_refused(capsys, file, marker)


@pytest.mark.parametrize("teacher", ["built-in name + teacher.weights", "local-dir folder"])
def test_a_teacher_that_would_run_code_is_refused_before_anything_is_built(fmnist_shards, tmp_path, capsys, teacher):
    marker = tmp_path / "payload_ran"
    if teacher == "local-dir folder":
        folder = tmp_path / "teacher"
        folder.mkdir()
        (folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
        file = poison(folder / "open_clip_pytorch_model.bin", marker)
        spec = [f"teacher.model=local-dir:{folder}"]
    else:
        file = poison(tmp_path / "teacher.bin", marker)
        spec = ["teacher.model=ViT-B-32", f"teacher.weights={file}"]
    assert stage1_main(["--config", STAGE1_CONFIG, *spec, f"train.output_dir={tmp_path / 'run'}",
                        f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
                        "train.batch_size=8"]) == 2
    assert_refused(capsys, file, marker)
