"""`train.remote_dir` (common/train/checkpoint/remote.py): a run whose machine is lost after its step-2 checkpoint, with
its local folder deleted, resumes with `--resume auto` from the remote copy (file:// and fsspec's
memory://) and continues exactly like an uninterrupted run: the same start records, every step logged
once, bit-identical losses and weights. A remote folder without the completion marker is never restored."""
from __future__ import annotations

import shutil
import uuid

import fsspec
import pytest

from common.artifacts import ENGINE_STATE_FILE
from common.config.schema import load_config, validate_run
from common.errors import ConfigError
from common.train.checkpoint.remote import RemoteRun
from common.train.engine import train
from tests.support.run_records import assert_resumed_exactly
from tests.support.tasks.stream_task import StreamConfig, StreamTask
from tests.support.tiny import single_process_run

STEPS, SAVE_EVERY = 4, 2


class LostMachineTask(StreamTask):
    """Raises on the first batch after `SAVE_EVERY` optimizer steps: the job dies after its checkpoint."""
    losses_computed = 0  # its own count: StreamTask counts its calls in `calls`

    def training_loss(self, model, batch):
        self.losses_computed += 1
        if self.losses_computed > SAVE_EVERY:
            raise RuntimeError("machine lost")
        return super().training_loss(model, batch)


def config(out, *extra: str) -> StreamConfig:
    return load_config(StreamConfig, None, [f"train.output_dir={out}", f"train.steps={STEPS}",
                                            f"train.save_every={SAVE_EVERY}", *extra])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = config(out)
    train(cfg, lambda run: StreamTask(cfg, run))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_resume_auto_restores_from_remote_after_the_local_folder_is_gone(reference, tmp_path, scheme):
    remote = f"file://{tmp_path / 'bucket'}" if scheme == "file" else f"memory://evaclip-{uuid.uuid4().hex}"
    out = tmp_path / "run"
    cfg = config(out, f"train.remote_dir={remote}")
    with pytest.raises(RuntimeError, match="machine lost"):
        train(cfg, lambda run: LostMachineTask(cfg, run))
    assert RemoteRun(remote).complete_checkpoints() == ["step_00000002"]
    shutil.rmtree(out)  # a fresh machine: nothing local
    train(cfg, lambda run: StreamTask(cfg, run), resume="auto")
    assert_resumed_exactly(out, reference, from_step=SAVE_EVERY)
    assert RemoteRun(remote).complete_checkpoints() == ["step_00000002", "step_00000004"]


def test_a_remote_checkpoint_without_its_marker_is_not_restored(tmp_path):
    remote = f"memory://evaclip-{uuid.uuid4().hex}"
    fs, root = fsspec.core.url_to_fs(remote)
    fs.pipe(f"{root}/checkpoints/step_00000002/model.safetensors", b"partial upload")
    assert RemoteRun(remote).pull_latest(tmp_path) is None
    fs.pipe(f"{root}/checkpoints/step_00000002/{ENGINE_STATE_FILE}", b"{}")
    assert RemoteRun(remote).pull_latest(tmp_path).name == "step_00000002"


def test_an_unknown_remote_scheme_is_a_one_line_error():
    with pytest.raises(ConfigError, match="train.remote_dir='nosuch://x'.*no fsspec file system"):
        validate_run(load_config(StreamConfig, None, ["train.remote_dir=nosuch://x"]), single_process_run())
