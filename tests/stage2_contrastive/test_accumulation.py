"""`train.contrastive_accum: K` (stage2_contrastive/accumulation.py through the engine): K micro-batches of B
scored as ONE contrastive batch of K·B give the loss and gradients of one micro-batch of K·B — both losses,
fp64 (tests/support/tasks/accum_step.py; 2 gloo ranks: tests/multiprocess/test_contrastive_accumulation.py) —
and a run logs the losses of the run with the K-times bigger batch. The cached and the re-forwarded pass
draw the same random numbers (patch dropout, drop-path)."""
from __future__ import annotations

import pytest
import torch

from common.config.schema import load_config
from common.train.engine import train
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.support.launch import ROOT
from tests.support.run_records import losses
from tests.support.tasks.accum_step import ACCUM, assert_same_step, first_step
from tests.support.tiny import TINY_STAGE2, single_process_run


@pytest.mark.parametrize("kind", [pytest.param("softmax", marks=pytest.mark.slow), "sigmoid"])
def test_accumulated_group_equals_one_batch_k_times_bigger(kind, fmnist_shards, tmp_path):
    result = first_step(kind, str(fmnist_shards), str(tmp_path / "run"))
    result.pop("trainer").close()
    assert_same_step(result["accumulated"], result["big"])


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
