"""Reliability: a run killed with SIGKILL resumes to the same losses as an uninterrupted run (1 and 2
processes); bad samples are skipped and counted while training goes on; 2 'nodes' on localhost."""
from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from common.checkpoint import complete_checkpoints
from common.metrics_log import read_metrics
from tests.conftest import TINY_STAGE2
from tests.launch import ROOT, free_port, subprocess_env, torchrun

RUN = ["train.steps=12", "train.save_every=3", "step_sleep=0.15"]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def launch(nproc: int, out: Path, *args: str) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "tests.tasks.linear_task", str(out), *args]
    return torchrun(nproc, "tests.tasks.linear_task", str(out), *args)


def kill_when_logged(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """SIGKILL the whole process group once `step` has been logged (mid-training, after a checkpoint)."""
    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, nproc):
    env = subprocess_env()
    full = tmp_path / "full"
    subprocess.run(launch(nproc, full, *RUN), cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(launch(nproc, killed, *RUN), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_logged(proc, killed, step=8)
    assert proc.returncode == -signal.SIGKILL or proc.returncode != 0
    assert complete_checkpoints(killed)[-1].name == "step_00000006"  # the step-9 one never completed
    subprocess.run(launch(nproc, killed, *RUN, "--resume", "auto"), cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    assert losses(killed) == losses(full)  # bit-identical on CPU fp32, steps 1..12
    assert len(losses(full)) == 12


def bad_shard_dir(fmnist_shards: Path, tmp_path: Path) -> Path:
    """The tiny shard set plus: a truncated copy of a shard, and a shard with an undecodable image and a
    sample that has neither caption nor label."""
    data = tmp_path / "bad"
    shutil.copytree(fmnist_shards / "train", data)
    (data.parent / "classnames.txt").write_text((fmnist_shards / "classnames.txt").read_text())
    good = sorted(data.glob("*.tar"))[0].read_bytes()
    (data / "shard-truncated.tar").write_bytes(good[: len(good) // 3])
    png = io.BytesIO()
    Image.new("L", (28, 28), 128).save(png, format="PNG")
    with tarfile.open(data / "shard-broken.tar", "w") as tar:
        for name, payload in [("broken-0.png", b"not a png at all"), ("broken-0.cls", b"3"),
                              ("nolabel-0.png", png.getvalue())]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return data


def test_bad_samples_are_skipped_counted_and_training_goes_on(fmnist_shards, tmp_path):
    from stage2_contrastive.train import main
    data = bad_shard_dir(fmnist_shards, tmp_path)
    out = tmp_path / "run"
    assert main(["--config", "configs/stage2/fmnist_tiny.yaml", f"data.train_shards={data}",
                 f"data.eval_shards={fmnist_shards / 'test'}", f"train.output_dir={out}", *TINY_STAGE2,
                 "train.steps=25", "train.batch_size=32", "data.shuffle_buffer=0"]) == 0
    records = [r for r in read_metrics(out) if "loss" in r]
    assert len(records) == 25 and records[-1]["skipped_samples"] > 0


def test_two_nodes_on_localhost(fmnist_shards, tmp_path):
    port, env = free_port(), subprocess_env()
    args = ["-m", "stage2_contrastive.train", "--config", "configs/stage2/fmnist_tiny.yaml",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            f"train.output_dir={tmp_path / 'run'}", *TINY_STAGE2, "train.steps=3"]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={rank}",
                               "--nproc_per_node=1", "--master_addr=127.0.0.1", f"--master_port={port}", *args],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    records = [r for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert len(records) == 3 and records[-1]["world_size"] == 2
