"""The stage-1 task for the shared engine: block-masked student regresses a frozen teacher's tokens."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.artifacts import TrunkInfo, write_trunk
from common.data.run_data import RunData
from common.data.templates import build_zeroshot_classifier, get_templates
from common.data.transforms import eval_transform, train_transform
from common.evaluation.topk import TopKCounter
from common.train.context import RunContext
from common.train.optim import tower_param_groups
from common.vision.trunk import create_eva_trunk, patch_grid
from stage1_mim.config import Stage1Config
from stage1_mim.loss import masked_cosine_loss
from stage1_mim.masking import BlockMaskGenerator, num_masked_for_ratio
from stage1_mim.model import MaskedEvaStudent
from stage1_mim.teacher import FrozenTeacher, build_teacher

log = logging.getLogger("evaclip")


class MimTask:
    """Stage 1: everything the engine needs, built from a `Stage1Config` and the run's context.
    The constructor loads the frozen teacher; the student is built in `build_model`, after the seed."""

    def __init__(self, cfg: Stage1Config, run: RunContext):
        self.cfg, self.run = cfg, run
        d, s, m = cfg.data, cfg.student, cfg.mask
        self.data = RunData(d, run.rank, run.world_size, run.micro_batch)
        self.templates = get_templates(d.templates)
        self.train_tf, self.eval_tf = train_transform(d.image_size, d.augment), eval_transform(d.image_size, d.augment)
        self.grid = patch_grid(s.vision_model, d.image_size)
        self.masker = BlockMaskGenerator(self.grid, num_masked_for_ratio(self.grid, m.ratio), m.min_block,
                                         m.max_block, tuple(m.aspect))
        self.teacher: FrozenTeacher = build_teacher(cfg.teacher.model, cfg.teacher.weights, self.grid,
                                                    (d.augment.mean, d.augment.std))
        self.teacher.compile_image_path(run.compile, run.compile_backend)  # the engine compiles the student

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        s = self.cfg.student
        trunk = create_eva_trunk(s.vision_model, self.cfg.data.image_size, drop_path_rate=s.drop_path_rate,
                                 attention=s.attention)
        student = MaskedEvaStudent(trunk, self.teacher.embed_dim)
        if s.grad_checkpointing:
            student.set_grad_checkpointing(True)
        return student

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        o = self.cfg.optim
        groups = tower_param_groups(model.trunk, o.weight_decay, 1.0, o.layer_decay)
        groups += tower_param_groups(model.head, o.weight_decay)
        return groups + [{"params": [model.mask_token], "weight_decay": 0.0, "lr_scale": 1.0}]

    # ---- data --------------------------------------------------------------------------------
    def _train_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))  # torch RNG: seeded per worker
        mask = torch.from_numpy(self.masker(rng).reshape(-1))
        return {"image": self.train_tf(image), "mask": mask}

    def _eval_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
        if meta.get("cls") is None:
            raise ValueError(f"eval sample {meta.get('key')} has no class label (cls)")
        return {"image": self.eval_tf(image), "label": meta["cls"]}

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        return self.data.train_batches(self._train_sample, seed)

    # ---- step --------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        images, mask = batch["image"], batch["mask"].bool()
        self.teacher.to(images.device)
        targets = self.teacher.patch_targets(images)
        predictions = model(images, mask)
        return masked_cosine_loss(predictions, targets, mask), {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    # ---- probe & weights ---------------------------------------------------------------------
    def evaluate(self, student: nn.Module, final: bool = False) -> dict[str, float]:
        """Zero-shot probe: the student's pooled token predictions on unmasked images, classified against
        the teacher's text embeddings of the prompt templates; top-1/top-5 over the eval split."""
        if not (self.cfg.probe and self.data.eval_urls and self.data.classnames):
            return {}
        device = self.run.device
        self.teacher.to(device)
        classifier = build_zeroshot_classifier(self.teacher.encode_text, self.data.classnames,
                                               self.templates).to(device)
        counter = TopKCounter((1, 5))
        dtype = next(student.parameters()).dtype
        for batch in self.data.eval_batches(self._eval_sample, final):
            images, labels = batch["image"].to(device, dtype), batch["label"].to(device)
            pooled = torch.nn.functional.normalize(student(images, None).float().mean(dim=1), dim=-1)
            counter.update(pooled @ classifier.float(), labels)
        return counter.result("probe", device)

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """`student_trunk.safetensors`: the timm trunk only (timm key names; no head, no mask token)."""
        trunk = {k[len("trunk."):]: v for k, v in state_dict.items() if k.startswith("trunk.")}
        write_trunk(out_dir, trunk, TrunkInfo(self.cfg.student.vision_model, self.cfg.data.image_size))
