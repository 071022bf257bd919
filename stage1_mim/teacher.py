"""The frozen CLIP teacher of stage 1: any open_clip model (a built-in name + a local weights file, or a
`local-dir:` folder such as this project's own export), reduced to what MIM needs:

- `patch_targets(images) -> [B, N_student, D]`: the teacher's patch tokens after its final norm and
  its projection into the joint embedding space, resized (bilinear) to the student's grid if needed;
- `encode_text(list[str]) -> [B, D]`: for the zero-shot probe.

Frozen: no grads, eval mode, never in the optimizer, never saved with the student.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import ConfigError
from common.train.compile import compile_in_place
from common.weights.safe_load import require_tensors_only
from stage1_mim.teacher_cache import require_open_clip_export

log = logging.getLogger("evaclip")


def _require_tensors_only_teacher(model: str, weights: str) -> None:
    """The teacher's torch pickles must hold tensors only (`UnsafeFileError`, one line), checked before
    open_clip builds anything: `teacher.weights`, and the pickles of a `local-dir:` folder."""
    files = [Path(weights)] if weights else []
    if model.startswith("local-dir:"):
        folder = Path(model[len("local-dir:"):])
        files += sorted(p for p in folder.glob("*") if p.suffix in (".bin", ".pt", ".pth") and p.is_file())
    for file in files:
        if file.is_file():
            require_tensors_only(file)


def load_open_clip(model: str, weights: str = "") -> tuple[nn.Module, dict]:
    """(model, preprocess_cfg) from a `local-dir:` folder or a built-in name + local weights file."""
    if model.startswith("local-dir:"):
        require_open_clip_export(model[len("local-dir:"):], flag="teacher.model=local-dir:")
    _require_tensors_only_teacher(model, weights)
    if model.startswith("local-dir:"):
        clip = open_clip.create_model(model)
    else:
        if not weights:
            raise ConfigError(f"teacher.model '{model}' is a built-in open_clip name: set teacher.weights to "
                             "a local weights file (nothing is downloaded), or use local-dir:FOLDER")
        try:
            clip = open_clip.create_model(model, pretrained=weights)
        except (RuntimeError, AssertionError, KeyError) as err:  # open_clip's own checks raise all three
            raise ConfigError(f"teacher weights '{weights}' do not match the open_clip config '{model}' "
                             f"({str(err).splitlines()[0][:200]}) — pass the config they were trained with") from err
    return clip, dict(clip.visual.preprocess_cfg) if hasattr(clip.visual, "preprocess_cfg") else {}


class FrozenTeacher(nn.Module):
    """A frozen open_clip model exposing patch-token targets and text embeddings."""

    def __init__(self, clip: nn.Module, tokenizer, student_grid: tuple[int, int],
                 student_norm: tuple[Sequence[float], Sequence[float]], teacher_norm: tuple | None = None):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.student_grid = tuple(student_grid)
        self.image_size = tuple(open_clip_image_size(clip))
        mean_s, std_s = (torch.tensor(v).view(1, 3, 1, 1) for v in student_norm)
        mean_t, std_t = (torch.tensor(v).view(1, 3, 1, 1) for v in (teacher_norm or student_norm))
        # x_teacher = (x_student * std_s + mean_s - mean_t) / std_t, as one affine map
        self.register_buffer("scale", std_s / std_t, persistent=False)
        self.register_buffer("shift", (mean_s - mean_t) / std_t, persistent=False)
        self.embed_dim = self._probe_dim()
        self._logged_resize = False
        self.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)  # always eval

    def _probe_dim(self) -> int:
        with torch.no_grad():
            return self(torch.zeros(1, 3, *self.image_size)).shape[-1]

    def compile_image_path(self, mode: str, backend: str = "inductor") -> None:
        """`train.compile` for the targets (`common.train.compile`): `model` compiles the whole token forward,
        `blocks` each block of the vision tower (the text tower, used by the probe only, stays eager)."""
        compile_in_place(self if mode == "model" else self.clip.visual, mode, backend, what="teacher")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] at the teacher's size → projected patch tokens [B, h*w, D] on its own grid."""
        visual = self.clip.visual
        if hasattr(visual, "trunk"):  # open_clip TimmModel (e.g. our Eva towers)
            trunk = visual.trunk
            tokens = trunk.forward_features(images)[:, trunk.num_prefix_tokens:]
            if not isinstance(getattr(trunk, "fc_norm", nn.Identity()), nn.Identity):
                tokens = trunk.fc_norm(tokens)  # avg-pool trunks normalise after pooling: per token here
            return visual.head(tokens)
        if hasattr(visual, "output_tokens"):  # open_clip's native VisionTransformer
            visual.output_tokens = True
            _, tokens = visual(images)
            visual.output_tokens = False
            return tokens @ visual.proj if visual.proj is not None else tokens
        raise TypeError(f"teacher vision tower {type(visual).__name__} is not supported: use a ViT or timm tower")

    @torch.no_grad()
    def patch_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Student-normalised images [B,3,S,S] → targets [B, N_student, D] (fp32)."""
        x = images * self.scale + self.shift
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        tokens = self(x).float()
        side = int(round(tokens.shape[1] ** 0.5))
        if (side, side) != self.student_grid:
            if not self._logged_resize:
                log.info("teacher grid %dx%d resized (bilinear) to the student grid %dx%d", side, side,
                         *self.student_grid)
                self._logged_resize = True
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
            grid = F.interpolate(grid, size=self.student_grid, mode="bilinear", align_corners=False)
            tokens = grid.flatten(2).transpose(1, 2)
        return tokens

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        return self.clip.encode_text(self.tokenizer(texts).to(device), normalize=True).float()


def open_clip_image_size(clip: nn.Module) -> tuple[int, int]:
    size = getattr(clip.visual, "image_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def build_teacher(model: str, weights: str, student_grid: tuple[int, int],
                  student_norm: tuple[Sequence[float], Sequence[float]]) -> FrozenTeacher:
    clip, pre = load_open_clip(model, weights)
    tokenizer = open_clip.get_tokenizer(model)
    teacher_norm = (pre["mean"], pre["std"]) if "mean" in pre and "std" in pre else None
    teacher = FrozenTeacher(clip, tokenizer, student_grid, student_norm, teacher_norm)
    log.info("teacher %s: image size %s, target width %d", model, teacher.image_size, teacher.embed_dim)
    return teacher
