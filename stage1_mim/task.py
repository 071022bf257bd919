"""The stage-1 task for the shared engine: block-masked student regresses a frozen teacher's tokens."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from common import data
from common.optim import tower_param_groups
from common.templates import build_zeroshot_classifier, get_templates
from common.transforms import eval_transform, train_transform
from common.vit import create_eva_trunk, grid_size
from stage1_mim.config import Stage1Config
from stage1_mim.loss import masked_cosine_loss
from stage1_mim.masking import BlockMaskGenerator, num_masked_for_ratio
from stage1_mim.model import MaskedEvaStudent
from stage1_mim.teacher import FrozenTeacher, build_teacher

log = logging.getLogger("evaclip")
TRUNK_FILE = "student_trunk.safetensors"


class MimTask:
    """Stage 1: everything the engine needs, built from a `Stage1Config`."""

    def __init__(self, cfg: Stage1Config):
        self.cfg = cfg
        d, s = cfg.data, cfg.student
        self.train_urls = data.resolve_shards(d.train_shards)
        self.eval_urls = data.resolve_shards(d.eval_shards) if d.eval_shards else []
        self.classnames = data.read_classnames(d.train_shards)
        self.templates = get_templates(d.templates)
        self.train_tf, self.eval_tf = train_transform(d.image_size, d.augment), eval_transform(d.image_size, d.augment)
        self.trunk = create_eva_trunk(s.vision_model, d.image_size, drop_path_rate=s.drop_path_rate,
                                      attention=s.attention)
        self.grid = grid_size(self.trunk)
        m = cfg.mask
        self.masker = BlockMaskGenerator(self.grid, num_masked_for_ratio(self.grid, m.ratio), m.min_block,
                                         m.max_block, tuple(m.aspect))
        self.teacher: FrozenTeacher = build_teacher(cfg.teacher.model, cfg.teacher.weights, self.grid,
                                                    (d.augment.mean, d.augment.std))

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        student = MaskedEvaStudent(self.trunk, self.teacher.embed_dim)
        if self.cfg.student.grad_checkpointing:
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

    def train_batches(self, seed: int, rank: int, world_size: int) -> Iterator[dict[str, Any]]:
        d = self.cfg.data
        return data.make_train_loader(self.train_urls, self._train_sample, self.cfg.train.batch_size,
                                      seed=seed, rank=rank, world_size=world_size,
                                      num_workers=d.num_workers, shuffle_buffer=d.shuffle_buffer)

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
    def evaluate(self, model: nn.Module, accelerator: Any, final: bool = False) -> dict[str, float]:
        """Zero-shot probe: the student's pooled token predictions on unmasked images, classified against
        the teacher's text embeddings of the prompt templates; top-1 over the eval split."""
        if not (self.cfg.probe and self.eval_urls and self.classnames):
            return {}
        from common.accuracy import topk_accuracy
        from common.dist import sum_across_ranks
        student = accelerator.unwrap_model(model)
        device = accelerator.device
        self.teacher.to(device)
        classifier = build_zeroshot_classifier(self.teacher.encode_text, self.classnames, self.templates).to(device)
        d = self.cfg.data
        counts = torch.zeros(3, dtype=torch.float64, device=device)
        batches = data.make_eval_loader(self.eval_urls, self._eval_sample, d.eval_batch_size,
                                        rank=accelerator.process_index, world_size=accelerator.num_processes,
                                        max_samples=d.eval_limit(final),
                                        num_workers=d.num_workers)
        dtype = next(student.parameters()).dtype
        for batch in batches:
            images, labels = batch["image"].to(device, dtype), batch["label"].to(device)
            pooled = torch.nn.functional.normalize(student(images, None).float().mean(dim=1), dim=-1)
            counts[:2] += topk_accuracy(pooled @ classifier.float(), labels, (1, 5)).to(device)
            counts[2] += labels.shape[0]
        counts = sum_across_ranks(counts, accelerator)
        n = max(float(counts[2]), 1.0)
        return {"probe_top1": float(counts[0]) / n, "probe_top5": float(counts[1]) / n, "n": int(counts[2])}

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """`student_trunk.safetensors`: the timm trunk only (timm key names; no head, no mask token)."""
        trunk = {k[len("trunk."):]: v.detach().float().contiguous().cpu()
                 for k, v in state_dict.items() if k.startswith("trunk.")}
        save_file(trunk, str(Path(out_dir) / TRUNK_FILE),
                  metadata={"format": "pt", "stage": "1", "vision_model": self.cfg.student.vision_model,
                            "image_size": str(self.cfg.data.image_size)})
