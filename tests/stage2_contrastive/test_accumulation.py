"""`train.contrastive_accum: K` (stage2_contrastive/accumulation.py through the engine): K micro-batches of
B scored as ONE contrastive batch of K·B per rank give the loss and gradients of one micro-batch of K·B —
both losses, 1 and 2 gloo ranks, fp64 (tests/tasks/accum_step.py) — and a run logs the losses of the run
with the K-times bigger batch. The cached and the re-forwarded pass draw the same random numbers (patch
dropout, drop-path), the sigmoid bias default counts the contrastive batch, a per-sample stage refuses K > 1."""
from __future__ import annotations

import math
import subprocess

import pytest
import torch

from common.config.schema import load_config
from common.errors import ConfigError
from common.run_context import RunContext
from common.train.engine import train
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.conftest import TINY_STAGE2, single_process_run
from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.run_records import losses
from tests.support.tasks.accum_step import ACCUM, KINDS, first_step
from tests.support.tasks.stream_task import StreamConfig, StreamTask

TOLERANCE = {"rtol": 1e-6, "atol": 1e-9}  # fp64: the two orders of summation agree to ~1e-14


def assert_same_step(accumulated: dict, big: dict) -> None:
    torch.testing.assert_close(accumulated["loss"], big["loss"], **TOLERANCE)
    assert set(accumulated["grads"]) == set(big["grads"])
    assert all(g.abs().max() > 0 for g in big["grads"].values())  # every trained tensor gets a gradient
    for name, grad in big["grads"].items():
        torch.testing.assert_close(accumulated["grads"][name], grad, **TOLERANCE,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("kind", [pytest.param("softmax", marks=pytest.mark.slow), "sigmoid"])
def test_accumulated_group_equals_one_batch_k_times_bigger(kind, fmnist_shards, tmp_path):
    result = first_step(kind, str(fmnist_shards), str(tmp_path / "run"))
    result.pop("trainer").close()
    assert_same_step(result["accumulated"], result["big"])


@pytest.fixture(scope="module")
def two_processes(fmnist_shards, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accum_2proc")
    proc = subprocess.run(torchrun(2, "tests.support.tasks.accum_step", str(out), str(fmnist_shards)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {(kind, r): torch.load(out / f"{kind}_rank{r}_of2.pt") for kind in KINDS for r in range(2)}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_two_ranks_accumulated_group_equals_one_batch_k_times_bigger(kind, two_processes):
    for rank in range(2):
        assert_same_step(two_processes[(kind, rank)]["accumulated"], two_processes[(kind, rank)]["big"])
    # the ranks hold different samples: each rank's loss is its own share of the 2-rank batch
    assert not torch.allclose(two_processes[(kind, 0)]["big"]["loss"], two_processes[(kind, 1)]["big"]["loss"])


def test_reforwarded_pass_replays_the_cached_pass_random_numbers(fmnist_shards, tmp_path):
    """With patch dropout and drop-path on, every pass of a group scores the same features: pass j's
    re-forwarded rows equal the cached rows, so all K losses are the same number."""
    overrides = [f"data.train_shards={fmnist_shards}/train", f"data.eval_shards={fmnist_shards}/test",
                 *TINY_STAGE2, "model.patch_dropout=0.5", "model.drop_path_rate=0.5"]
    cfg = load_config(Stage2Config, str(ROOT / "configs/stage2/fmnist_tiny.yaml"), overrides)
    task = ContrastiveTask(cfg, single_process_run(micro_batch=4))
    torch.manual_seed(0)
    model = task.build_model().double().train()
    generator = torch.Generator().manual_seed(1)
    tokens = task.tokenizer(["a photo of a shirt.", "a photo of a bag.", "a photo of a coat.", "a sandal."])
    batches = [{"image": torch.randn(4, 3, 28, 28, generator=generator, dtype=torch.float64), "text": tokens}
               for _ in range(3)]
    pass_losses = [loss.item() for loss, _ in task.contrastive_group(model, batches)]
    assert len(pass_losses) == 3
    assert pass_losses == pytest.approx([pass_losses[0]] * 3, rel=1e-12)
    # without the replay the dropout draws differ: the same micro-batch forwarded twice gives other rows
    first, second = (model(batches[0]["image"], batches[0]["text"])["image_features"] for _ in range(2))
    assert not torch.allclose(first, second)


def test_sigmoid_bias_default_counts_the_contrastive_batch(stage2_overrides):
    """b = −ln(B − 1) for B = micro-batch × contrastive_accum × ranks (8 × 4 × 2 = 64)."""
    cfg = load_config(Stage2Config, None, [*stage2_overrides, "loss=sigmoid"])
    run = RunContext(rank=0, world_size=2, device=torch.device("cpu"), micro_batch=8, grad_accum=3,
                     precision="fp32", deepspeed=False, contrastive_accum=4)
    assert run.contrastive_batch == 64 and run.samples_per_step == 192
    assert ContrastiveTask(cfg, run).objective.init_logit_bias == pytest.approx(-math.log(63))


def test_a_per_sample_task_refuses_contrastive_accumulation(tmp_path):
    cfg = load_config(StreamConfig, None, [f"train.output_dir={tmp_path}", "train.contrastive_accum=2"])
    with pytest.raises(ConfigError, match="train.contrastive_accum=2.*use train.grad_accum"):
        train(cfg, lambda run: StreamTask(cfg, run))


@pytest.mark.slow
def test_run_with_k_micro_batches_logs_the_losses_of_the_k_times_bigger_batch(stage2_overrides, tmp_path):
    """The data stream of K micro-batches of 4 is the sample sequence of batches of 4·K (fp32, 2 steps)."""
    logged = {}
    for batch, accum in ((4 * ACCUM, 1), (4, ACCUM)):
        out = tmp_path / f"b{batch}_k{accum}"
        cfg = load_config(Stage2Config, str(ROOT / "configs/stage2/fmnist_tiny.yaml"), [
            *stage2_overrides, f"train.output_dir={out}", "train.steps=2", f"train.batch_size={batch}",
            f"train.contrastive_accum={accum}", "data.eval_shards=", "train.eval_every=0"])
        train(cfg, lambda run: ContrastiveTask(cfg, run))
        logged[accum] = losses(out)
    assert list(logged[ACCUM]) == [1, 2]
    assert list(logged[ACCUM].values()) == pytest.approx(list(logged[1].values()), rel=1e-5)
