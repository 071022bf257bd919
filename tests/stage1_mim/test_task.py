"""stage1_mim/task.py, the stage-1 task: `student.grad_checkpointing` from the config is in effect, and the
held-out loss is the masked cosine loss on fixed masks, with or without labels (a probe beside it when
labelled)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.config.schema import load_config
from stage1_mim.config import Stage1Config
from stage1_mim.task import EVAL_MASK_SEED, MimTask
from tests.support.models import block_runs_in_forward_backward
from tests.support.teachers import save_native_vit_folder
from tests.support.tiny import STAGE1_CONFIG, single_process_run, stage1_overrides

STAGE1 = STAGE1_CONFIG


def test_student_grad_checkpointing_from_the_config_is_in_effect(fmnist_shards, tmp_path):
    teacher = tmp_path / "teacher"  # a tiny native open_clip ViT: no stage-2 run needed to build the task
    save_native_vit_folder(teacher)
    overrides = stage1_overrides(fmnist_shards, tmp_path / "run", teacher)
    images, mask = torch.randn(2, 3, 56, 56), torch.arange(16).repeat(2, 1) % 3 == 0  # 4x4 grid
    runs = {}
    for enabled in (False, True):
        cfg = load_config(Stage1Config, STAGE1, [*overrides, f"student.grad_checkpointing={enabled}"])
        task = MimTask(cfg, single_process_run(cfg.train.batch_size))
        runs[enabled] = block_runs_in_forward_backward(task.build_model(), images, mask)
    assert runs == {False: 1, True: 2}  # checkpointed blocks are recomputed in backward


@torch.no_grad()
def test_held_out_loss_is_the_masked_cosine_loss_on_fixed_masks_with_or_without_labels(
        fmnist_shards, caption_shards, teacher_export, tmp_path):
    """The eval's `loss`: 1 − cos over the masked tokens of every held-out image, image i masked by
    `default_rng([EVAL_MASK_SEED, i])` — computed image by image here; caption-only images get it (and no
    probe), for any eval batch size; labelled ones get the probe beside it."""
    overrides = stage1_overrides(fmnist_shards, tmp_path / "run", teacher_export,
                                 f"data.eval_shards={caption_shards / 'test'}", "data.eval_batch_size=32",
                                 "data.image_size=28", "data.final_eval_max_samples=16")
    task = MimTask(load_config(Stage1Config, STAGE1, overrides), single_process_run())
    torch.manual_seed(0)
    student = task.build_model().eval()
    metrics = task.evaluate(student, final=True)
    assert set(metrics) == {"loss", "n"} and metrics["n"] == 16

    def sample(image, meta):
        return {"image": task.eval_tf(image), "index": meta["index"]}
    total, tokens = 0.0, 0
    for batch in task.data.eval_batches(sample, final=True):
        for image, index in zip(batch["image"], batch["index"].tolist()):
            mask = torch.from_numpy(task.masker(np.random.default_rng([EVAL_MASK_SEED, index])).reshape(1, -1))
            pred, target = student(image[None], mask)[mask], task.teacher.patch_targets(image[None])[mask]
            total += float((1 - F.cosine_similarity(pred, target, dim=-1)).double().sum())
            tokens += int(mask.sum())
    assert metrics["loss"] == pytest.approx(total / tokens, abs=1e-6)
    task.data.cfg.eval_batch_size = 5
    assert task.evaluate(student, final=True)["loss"] == pytest.approx(metrics["loss"], abs=1e-6)
    labelled = MimTask(load_config(Stage1Config, STAGE1, [*overrides, f"data.eval_shards={fmnist_shards / 'test'}"]),
                       single_process_run())
    assert set(labelled.evaluate(student, final=True)) == {"loss", "n", "probe_top1", "probe_top5"}
