"""Stage 2 under the launchers a cluster uses, on 2 CPU processes: `accelerate launch` and torchrun as two
'nodes' on localhost."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.launch import ROOT, free_port, subprocess_env
from tests.support.run_records import loss_records
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2

CONFIG = STAGE2_CONFIG


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(stage2_overrides, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "stage2_contrastive.train", "--config", CONFIG, "train.steps=2", *stage2_overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "batch_size: 8" in config
    world = loss_records(tmp_path / "run")[-1]
    assert world["world_size"] == 2


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
