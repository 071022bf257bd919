"""stage2_contrastive/task.py, the stage-2 task: the sigmoid bias default counts the contrastive batch, per-tower
weight decay and lr reach the param groups, the held-out evaluation scores the run's own loss and ranks the
split's real captions, and the weights file records the stage-1 trunk `--init` loaded."""
from __future__ import annotations

import io
import math
import os
import tarfile

import pytest
import torch
from PIL import Image

from common.config.schema import load_config
from common.run_context import RunContext
from common.weights.formats import ClipConfig
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.support.run_folders import stage1_run, trained_like_run
from tests.support.tasks.zeroshot_eval import EvalCase, reference_metrics
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2, single_process_run

CONFIG = STAGE2_CONFIG


def test_sigmoid_bias_default_counts_the_contrastive_batch(stage2_overrides):
    """b = −ln(B − 1) for B = micro-batch × contrastive_accum × ranks (8 × 4 × 2 = 64)."""
    cfg = load_config(Stage2Config, None, [*stage2_overrides, "loss=sigmoid"])
    run = RunContext(rank=0, world_size=2, device=torch.device("cpu"), micro_batch=8, grad_accum=3,
                     precision="fp32", deepspeed=False, contrastive_accum=4)
    assert run.contrastive_batch == 64 and run.samples_per_step == 192
    assert ContrastiveTask(cfg, run).objective.init_logit_bias == pytest.approx(-math.log(63))


def test_per_tower_weight_decay_and_lr_reach_the_param_groups(stage2_overrides):
    cfg = load_config(Stage2Config, CONFIG, [*stage2_overrides, "optim.weight_decay=0.1",
                                             "model.text.weight_decay=0.02",
                                             "model.vision_weight_decay=0.3", "model.text.lr_scale=0.5"])
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    model = task.build_model()
    groups = {id(p): g for g in task.param_groups(model) for p in g["params"]}
    text_w = model.text.transformer.resblocks[0].mlp.c_fc.weight
    vision_w = model.visual.trunk.blocks[0].attn.qkv.weight
    assert (groups[id(text_w)]["weight_decay"], groups[id(text_w)]["lr_scale"]) == (0.02, 0.5)
    assert (groups[id(vision_w)]["weight_decay"], groups[id(vision_w)]["lr_scale"]) == (0.3, 1.0)
    assert groups[id(model.visual.trunk.blocks[0].norm1.weight)]["weight_decay"] == 0.0  # 1-D: never decayed
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@torch.no_grad()
def test_the_held_out_loss_is_the_runs_own_loss_on_chunks_of_one_training_batch(fmnist_shards, loss):
    """The model's own forward and the run's loss module on consecutive chunks of `train.batch_size` held-out
    pairs (eval transform, first template), averaged: the eval's `loss`."""
    cfg = load_config(Stage2Config, CONFIG, [*TINY_STAGE2, f"loss={loss}", "data.eval_max_samples=20",
                                             f"data.train_shards={fmnist_shards / 'train'}",
                                             f"data.eval_shards={fmnist_shards / 'test'}"])
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    torch.manual_seed(0)
    clip = task.build_model().eval()
    rows = [r for b in task.data.eval_batches(task.eval_sample, final=False) for r in zip(b["image"], b["caption"])]
    chunks = [rows[s:s + 8] for s in (0, 8)]  # 20 pairs: two full chunks of 8, the last 4 left out
    values = []
    for chunk in chunks:
        out = clip(torch.stack([image for image, _ in chunk]), task.tokenizer([caption for _, caption in chunk]))
        values.append(float(task.loss_fn(out["image_features"], out["text_features"], out["logit_scale"],
                                         out.get("logit_bias"))))
    assert task.evaluate(clip)["loss"] == pytest.approx(sum(values) / 2, abs=1e-5)


def test_stage_2_records_the_trunk_init_loaded_as_an_absolute_path(tmp_path, fmnist_shards):
    trunk = stage1_run(tmp_path)
    cfg = Stage2Config()
    cfg.data.train_shards, cfg.data.eval_shards = str(fmnist_shards / "train"), str(fmnist_shards / "test")
    model, _, _ = trained_like_run(tmp_path, "softmax")
    task = ContrastiveTask(cfg, single_process_run(), init=os.path.relpath(trunk))
    task.save_weights(model.state_dict(), tmp_path)
    assert ClipConfig.read(tmp_path).info.init_from == str(trunk.resolve())


@torch.no_grad()
def test_the_held_out_evaluation_ranks_the_splits_own_captions(caption_shards):
    """Caption-only held-out pairs (img2dataset's layout, 32 distinct captions): the eval's retrieval metrics
    are those of the split's real captions — read here from the tars with tarfile — ranked against the
    model's image features, by brute force on the caption strings (tests/support/tasks/zeroshot_eval.py).
    Mutation (a): `caption = "x"` in `ContrastiveTask.eval_sample` — every pair carries one caption, i2t
    ranks one distinct caption (R@1 = 1), and this fails."""
    test = caption_shards / "test"
    cfg = load_config(Stage2Config, CONFIG, [*TINY_STAGE2, f"data.train_shards={caption_shards / 'train'}",
                                             f"data.eval_shards={test}"])
    task = ContrastiveTask(cfg, single_process_run())
    torch.manual_seed(0)
    clip = task.build_model().eval()
    metrics = task.evaluate(clip, final=True)
    images, captions = [], []
    for tar_path in sorted(test.glob("*.tar")):  # the split as written, in the eval stream's order
        with tarfile.open(tar_path) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name in sorted(n for n in files if n.endswith(".txt")):
            key = name[:-len(".txt")]
            images.append(task.eval_tf(Image.open(io.BytesIO(files[f"{key}.jpg"]))))
            captions.append(files[name].decode())
    assert len(set(captions)) == len(captions) == metrics["n"] == 32
    image_features = clip.encode_image(torch.stack(images), normalize=True)
    text_features = clip.encode_text(task.tokenizer(captions), normalize=True)
    case = EvalCase([], image_features, torch.full((len(captions),), -1), captions, dict(zip(captions, text_features)))
    expected = {k: v for k, v in reference_metrics(case).items() if "_R@" in k}
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, abs=1e-9)
    assert expected["i2t_R@1"] < 1 and expected["t2i_R@1"] < 1  # an untrained model ranks 32 captions imperfectly
