"""Reliability: a run killed with SIGKILL resumes at its last checkpoint to the same losses and weights as
an uninterrupted run (1 and 2 processes); bad samples are skipped and counted exactly while training goes
on; 2 'nodes' on localhost."""
from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from PIL import Image

from common.artifacts import complete_checkpoints
from tests.conftest import TINY_STAGE2, single_process_run
from tests.support.launch import LINEAR_RUN, ROOT, free_port, linear_run, subprocess_env
from tests.support.run_records import assert_resumed_exactly, loss_records, losses, start_records, write_tar


def kill_when_logged(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """SIGKILL the launcher's process group and every process under it once `step` has been logged
    (mid-training, after a checkpoint). torchrun starts each worker in a session of its own, so killing
    the launcher's group alone would leave the workers training on."""
    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the run never reached the kill step"
        time.sleep(0.02)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"still running after SIGKILL: {alive}"


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [1, 2])
def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, nproc, uninterrupted_linear_run):
    env = subprocess_env()
    full = uninterrupted_linear_run(nproc)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(linear_run(nproc, killed, *LINEAR_RUN), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_logged(proc, killed, step=8)
    assert proc.returncode == -signal.SIGKILL or proc.returncode != 0
    assert complete_checkpoints(killed)[-1].name == "step_00000006"  # the step-9 one never completed
    subprocess.run(linear_run(nproc, killed, *LINEAR_RUN, "--resume", "auto"), cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=600)
    # the resumed processes began at step 6 with nproc ranks; steps 1..12 logged once, bit-identical (CPU fp32)
    assert_resumed_exactly(killed, full, from_step=6, world_size=nproc)
    assert len(losses(full)) == 12
    assert start_records(killed)[-1]["distributed_type"] == ("NO" if nproc == 1 else "MULTI_CPU")


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
    write_tar(data / "shard-broken.tar", [("broken-0.png", b"not a png at all"), ("broken-0.cls", b"3"),
                                          ("nolabel-0.png", png.getvalue())])
    return data


@pytest.mark.slow
def test_bad_samples_are_skipped_counted_exactly_and_training_goes_on(fmnist_shards, tmp_path):
    from common.config.schema import load_config
    from common.train.engine import data_seed
    from stage2_contrastive.config import Stage2Config
    from stage2_contrastive.task import ContrastiveTask
    from stage2_contrastive.train import main
    data = bad_shard_dir(fmnist_shards, tmp_path)
    out = tmp_path / "run"
    assert main(["--config", "configs/stage2/fmnist_tiny.yaml", f"data.train_shards={data}",
                 f"data.eval_shards={fmnist_shards / 'test'}", f"train.output_dir={out}", *TINY_STAGE2,
                 "train.steps=25", "train.batch_size=32", "data.shuffle_buffer=0"]) == 0
    counted = [r["skipped_samples"] for r in loss_records(out)]
    # the skips in the 25 batches the run drew, read off the same stream (seeded as the engine seeds it)
    cfg = load_config(Stage2Config, out / "config.yaml")
    stream = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size)).train_batches(data_seed(cfg.train.seed, 0))
    drawn = itertools.accumulate(int(batch["skipped"].sum()) for batch in itertools.islice(stream, 25))
    assert counted == list(drawn) and counted[-1] > 0


@pytest.mark.slow
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
    records = loss_records(tmp_path / "run")
    assert len(records) == 3 and records[-1]["world_size"] == 2
