"""DeepSpeed ZeRO-1/2/3 through accelerate's plugin, 2 gloo processes on CPU: the first-step loss
equals the plain 2-process run's, and ZeRO-3's consolidated weights export like a plain run's."""
from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from common.metrics_log import read_metrics
from tests.conftest import TINY_STAGE2
from tests.launch import ROOT, subprocess_env, torchrun

pytestmark = pytest.mark.slow
CONFIG = "configs/stage2/fmnist_tiny.yaml"


def run_two_processes(out, fmnist_shards, *extra: str) -> list[dict]:
    cmd = torchrun(2, "stage2_contrastive.train", "--config", CONFIG, f"train.output_dir={out}",
                   f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
                   *TINY_STAGE2, "data.eval_max_samples=32", *extra)
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [r for r in read_metrics(out) if "loss" in r]


@pytest.fixture(scope="module")
def plain_run(fmnist_shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return out, run_two_processes(out, fmnist_shards, "train.steps=2")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_first_step_loss_equals_plain_run(plain_run, fmnist_shards, tmp_path, stage):
    _, plain = plain_run
    zero = run_two_processes(tmp_path, fmnist_shards, "train.steps=2",
                             f"train.deepspeed=configs/deepspeed/zero{stage}.json")
    assert zero[0]["world_size"] == 2
    assert zero[0]["loss"] == pytest.approx(plain[0]["loss"], abs=1e-5)
    assert (tmp_path / "model.safetensors").is_file()


def test_zero3_consolidated_weights_equal_plain_weights(fmnist_shards, tmp_path):
    # lr = 0: the weights stay the seed's initial weights, so both runs must write identical tensors
    plain = tmp_path / "plain"
    zero3 = tmp_path / "zero3"
    run_two_processes(plain, fmnist_shards, "train.steps=1", "optim.lr=0.0")
    run_two_processes(zero3, fmnist_shards, "train.steps=1", "optim.lr=0.0",
                      "train.deepspeed=configs/deepspeed/zero3.json")
    a, b = load_file(str(plain / "model.safetensors")), load_file(str(zero3 / "model.safetensors"))
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape and torch.equal(a[key], b[key]), key


def test_zero2_non_finite_gradient_is_skipped_and_counted(tmp_path):
    # DeepSpeed steps inside `backward`: the guard must read whether its ZeRO optimizer applied the update
    cmd = torchrun(2, "tests.tasks.linear_task", str(tmp_path), "train.steps=6", "nan_grad_at_steps=[3]",
                   "train.deepspeed=configs/deepspeed/zero2.json", "train.grad_clip=1.0")
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    records = [r for r in read_metrics(tmp_path) if "loss" in r]
    assert [r["bad_steps"] for r in records] == [0, 0, 1, 1, 1, 1]
    assert all(r["world_size"] == 2 and torch.isfinite(torch.tensor(r["loss"])) for r in records if r["step"] != 3)
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
