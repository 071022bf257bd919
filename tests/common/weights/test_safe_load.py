"""Files from elsewhere load tensors only. A pickle that would run code when loaded (here: create a marker
folder) is refused with one line and exit status 2 wherever a user hands evaclip a file: `--init`,
`--resume` (every pickle of the checkpoint, whatever accelerate or DeepSpeed would load it with),
`teacher.weights` and a `local-dir:` teacher, `model.text.weights`; the marker is never created."""
from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest

from common.artifacts import EngineState, complete_checkpoints
from common.errors import UnsafeFileError
from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main
from tests.support.run_records import reseal
from tests.support.tasks.linear_task import run_linear
from tests.common.train.test_cli import CONFIG, one_line_error


class Payload:
    """Unpickling this creates the folder `marker`: a file holding it must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def poison(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    return path


def assert_refused(capsys, path: Path, marker: Path) -> None:
    assert f"'{path}' would import os.makedirs — refused" in one_line_error(capsys)
    assert not marker.exists()


@pytest.mark.parametrize("where", ["--init", "model.text.weights"])
def test_stage2_weights_from_elsewhere_that_would_run_code_are_refused(stage2_overrides, tmp_path, capsys, where):
    marker, file = tmp_path / "payload_ran", tmp_path / "weights.bin"
    poison(file, marker)
    flag = ["--init", str(file)] if where == "--init" else [f"model.text.weights={file}"]
    assert stage2_main(["--config", CONFIG, *stage2_overrides, "train.steps=1", *flag]) == 2
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
    assert stage1_main(["--config", "configs/stage1/fmnist_tiny.yaml", *spec, f"train.output_dir={tmp_path / 'run'}",
                        f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
                        "train.batch_size=8"]) == 2
    assert_refused(capsys, file, marker)


def test_a_poisoned_optimizer_state_is_one_line_and_runs_nothing(stage2_overrides, tmp_path, capsys):
    args = ["--config", CONFIG, *stage2_overrides, "train.steps=1"]
    assert stage2_main(args) == 0
    capsys.readouterr()
    checkpoint = complete_checkpoints(tmp_path / "run")[-1]
    marker = tmp_path / "payload_ran"
    poison(checkpoint / "optimizer.bin", marker)
    reseal(checkpoint)  # its manifest rewritten with it: the tensors-only check must catch it
    assert stage2_main([*args, "--resume", str(checkpoint)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: --resume {checkpoint}: '{checkpoint / 'optimizer.bin'}' would import os.makedirs")
    assert not marker.exists()


@pytest.fixture(scope="module")
def linear_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("linear") / "run"
    run_linear(out, "train.steps=2")
    return complete_checkpoints(out)[-1]


def test_the_lr_schedule_is_kept_in_the_json_marker_not_in_a_pickle(linear_checkpoint):
    # accelerate saves objects registered for checkpointing as custom_checkpoint_*.pkl and loads them with
    # weights_only=False: the engine registers none (the scheduler's state is in engine_state.json)
    assert not list(linear_checkpoint.glob("custom_checkpoint_*"))
    assert EngineState.read(linear_checkpoint).scheduler["last_epoch"] == 2


@pytest.mark.parametrize("name", ["random_states_0.pkl", "custom_checkpoint_0.pkl"])
def test_any_pickle_of_a_checkpoint_that_would_run_code_is_refused_at_resume(linear_checkpoint, tmp_path, name):
    # random_states: accelerate would fail to load it and go on without a word (unseeded); custom_checkpoint:
    # what accelerate unpickles with weights_only=False for registered objects (older evaclip checkpoints)
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / linear_checkpoint.name
    shutil.copytree(linear_checkpoint, checkpoint)
    marker = tmp_path / "payload_ran"
    poison(checkpoint / name, marker)
    reseal(checkpoint)
    with pytest.raises(UnsafeFileError, match=f"'{checkpoint / name}' would import os.makedirs — refused"):
        run_linear(run_dir, "train.steps=2", resume="auto")
    assert not marker.exists()
