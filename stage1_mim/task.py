"""The stage-1 task for the shared engine: block-masked student regresses a frozen teacher's tokens."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.data.eval_sets import check_label
from common.data.run_data import RunData
from common.data.templates import Template, build_zeroshot_classifier, get_templates
from common.data.transforms import eval_transform, train_transform
from common.evaluation.classify import zeroshot_accuracy
from common.evaluation.dist import sum_across_ranks
from common.evaluation.topk import TopKCounter
from common.run_context import RunContext
from common.train.optim import tower_param_groups
from common.vision.trunk import create_eva_trunk, patch_grid
from common.weights.formats import TrunkInfo, write_trunk
from stage1_mim.config import Stage1Config
from stage1_mim.loss import masked_cosine_loss
from stage1_mim.model import MaskedEvaStudent
from stage1_mim.teacher import FrozenTeacher, build_teacher

log = logging.getLogger("evaclip")
EVAL_MASK_SEED = 0  # held-out masks: sample i of the split gets mask(default_rng([EVAL_MASK_SEED, i])) in every run


def student_trunk(cfg: Stage1Config) -> nn.Module:
    """The student's timm trunk as the config describes it (`student.*` at `data.image_size`)."""
    s = cfg.student
    return create_eva_trunk(s.vision_model, cfg.data.image_size, global_pool=s.global_pool,
                            drop_path_rate=s.drop_path_rate, attention=s.attention)


class MimTask:
    """Stage 1: everything the engine needs, built from a `Stage1Config` and the run's context.
    The constructor loads the frozen teacher; the student is built in `build_model`, after the seed."""

    def __init__(self, cfg: Stage1Config, run: RunContext):
        self.cfg, self.run = cfg, run
        d, s, m = cfg.data, cfg.student, cfg.mask
        self.data = RunData(d, cfg.eval, run.rank, run.world_size, run.micro_batch)
        self.templates = get_templates(d.templates)
        self.train_tf, self.eval_tf = train_transform(d.image_size, d.augment), eval_transform(d.image_size, d.augment)
        self.grid = patch_grid(s.vision_model, d.image_size)
        self.masker = m.generator(self.grid)
        self.teacher: FrozenTeacher = build_teacher(cfg.teacher.model, cfg.teacher.weights, self.grid,
                                                    (d.augment.mean, d.augment.std))
        self.teacher.compile_image_path(run.compile, run.compile_backend)  # the engine compiles the student

    # ---- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        s = self.cfg.student
        student = MaskedEvaStudent(student_trunk(self.cfg), self.teacher.embed_dim)
        if s.grad_checkpointing:
            student.set_grad_checkpointing(True)
        return student

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        o = self.cfg.optim
        groups = tower_param_groups(model.trunk, o.weight_decay, 1.0, o.layer_decay)
        groups += tower_param_groups(model.head, o.weight_decay)
        return groups + [{"params": [model.mask_token], "weight_decay": 0.0, "lr_scale": 1.0}]

    # ---- data --------------------------------------------------------------------------------
    def train_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One training sample of a decoded image (its captions unused): `image` [3, H, W], `mask` [N] bool."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))  # torch RNG: seeded per worker
        mask = torch.from_numpy(self.masker(rng).reshape(-1))
        return {"image": self.train_tf(image), "mask": mask}

    def _eval_sample(self, image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
        """A held-out image with its fixed mask (a function of its position in the split) and label (−1: none)."""
        mask = self.masker(np.random.default_rng([EVAL_MASK_SEED, meta["index"]])).reshape(-1)
        label = meta["cls"] if meta["cls"] is not None else -1
        return {"image": self.eval_tf(image), "mask": torch.from_numpy(mask), "label": label}

    def _probe_sample(self, num_classes: int) -> Any:
        def sample(image: Image.Image, meta: dict[str, Any]) -> dict[str, Any]:
            return {"image": self.eval_tf(image), "label": check_label(meta, num_classes)}
        return sample

    def train_batches(self, seed: int) -> Iterator[dict[str, Any]]:
        return self.data.train_batches(self.train_sample, seed)

    # ---- step --------------------------------------------------------------------------------
    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        images, mask = batch["image"], batch["mask"].bool()
        self.teacher.to(images.device)
        targets = self.teacher.patch_targets(images)
        predictions = model(images, mask)
        return masked_cosine_loss(predictions, targets, mask), {}

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        pass

    # ---- eval & weights ----------------------------------------------------------------------
    def evaluate(self, student: nn.Module, final: bool = False) -> dict[str, Any]:
        """Held-out split: the masked cosine `loss` on fixed masks (labels or not) and, with class names
        and labels, the zero-shot probe; then the probe on every `eval.zeroshot` set, under its name.
        The probe: the student's pooled token predictions on unmasked images, classified against the
        teacher's text embeddings of the prompt templates (top-1/top-5)."""
        metrics: dict[str, Any] = {}
        self.teacher.to(self.run.device)
        if self.data.eval_urls:
            metrics.update(self._heldout(student, final))
        if self.cfg.probe:
            for zs in self.data.zeroshot_sets:
                batches = self.data.eval_batches(self._probe_sample(len(zs.classnames)), final, zs.urls)
                metrics[zs.name] = self._probe(student, batches, zs.classnames, zs.templates)
        return metrics

    def _heldout(self, student: nn.Module, final: bool) -> dict[str, Any]:
        """{loss, n} over every rank, + the probe's top-1/top-5 over the labelled samples when class names
        are known."""
        device, dtype = self.run.device, next(student.parameters()).dtype
        probing = self.cfg.probe and bool(self.data.classnames)
        classifier = self._classifier(self.data.classnames, self.templates) if probing else None
        counter = TopKCounter((1, 5))
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # Σ (1 − cos) on masked tokens, tokens, samples
        for batch in self.data.eval_batches(self._eval_sample, final):
            images, mask = batch["image"].to(device, dtype), batch["mask"].to(device).bool()
            loss = masked_cosine_loss(student(images, mask), self.teacher.patch_targets(images), mask)
            tokens = mask.sum().double()
            sums += torch.stack([loss.double() * tokens, tokens, tokens.new_tensor(float(images.shape[0]))])
            keep = batch["label"] >= 0
            if classifier is not None and bool(keep.any()):
                counter.update(self._pooled(student, images[keep.to(device)]) @ classifier, batch["label"][keep])
        sums = sum_across_ranks(sums)
        if sums[2] == 0:
            raise ValueError("the eval split is empty — check data.eval_shards")
        metrics: dict[str, Any] = {"loss": float(sums[0] / sums[1]), "n": int(sums[2])}
        if classifier is not None:
            probe = counter.result("probe", device, allow_empty=True)
            metrics.update({k: v for k, v in probe.items() if k != "n"})
        return metrics

    def _classifier(self, classnames: Sequence[str], templates: Sequence[Template]) -> torch.Tensor:
        """The teacher's zero-shot classifier `[D, C]` float32 on the run's device."""
        classifier = build_zeroshot_classifier(self.teacher.encode_text, classnames, templates)
        return classifier.to(self.run.device).float()

    @staticmethod
    def _pooled(student: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """The student's mean token prediction on unmasked images, L2-normalised: `[B, D]` float32."""
        dtype = next(student.parameters()).dtype
        return torch.nn.functional.normalize(student(images.to(dtype), None).float().mean(dim=1), dim=-1)

    def _probe(self, student: nn.Module, batches: Any, classnames: Sequence[str],
               templates: Sequence[Template]) -> dict[str, Any]:
        return zeroshot_accuracy(lambda images: self._pooled(student, images),
                                 self._classifier(classnames, templates), batches, self.run.device, prefix="probe")

    def save_weights(self, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """`student_trunk.safetensors`: the timm trunk only (timm key names; no head, no mask token)."""
        trunk = {k[len("trunk."):]: v for k, v in state_dict.items() if k.startswith("trunk.")}
        write_trunk(out_dir, trunk, TrunkInfo(self.cfg.student.vision_model, self.cfg.data.image_size))
