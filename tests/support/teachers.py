"""Stage-1 teachers for the tests: a tiny native open_clip ViT saved as a `local-dir:` folder, and the
teacher's targets computed directly from a tower's parts (the reference `FrozenTeacher.patch_targets` must
equal): student→teacher normalisation, bicubic resize to the teacher's size, patch tokens after the final
norm and the projection, bilinear resize to the student's grid."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

Norm = tuple[Sequence[float], Sequence[float]]
TEACHER_SIZE, PATCH, EMBED_DIM = 28, 14, 16  # teacher: 2x2 patches of 14 px
STUDENT_SIZE, STUDENT_GRID = 56, (4, 4)
STUDENT_NORM: Norm = ((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
TEACHER_NORM: Norm = (open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
NATIVE_VIT_CFG = {  # open_clip `CLIP` model_cfg: a 1-layer ViT at 28 px, projection 32 -> 16
    "embed_dim": EMBED_DIM,
    "vision_cfg": {"image_size": TEACHER_SIZE, "patch_size": PATCH, "width": 32, "layers": 1, "head_width": 16,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def save_native_vit_folder(folder: Path) -> dict[str, torch.Tensor]:
    """A randomly initialised native open_clip ViT CLIP saved as a `local-dir:` folder
    (`open_clip_config.json` with TEACHER_NORM as its preprocessing + `open_clip_model.safetensors`)."""
    torch.manual_seed(0)
    clip = open_clip.CLIP(**NATIVE_VIT_CFG)
    with torch.no_grad():  # non-trivial final norm, so a target that skipped it would differ
        clip.visual.ln_post.weight.uniform_(0.5, 1.5)
        clip.visual.ln_post.bias.normal_(0, 0.5)
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "open_clip_model.safetensors"))
    preprocess = {"size": TEACHER_SIZE, "mean": list(TEACHER_NORM[0]), "std": list(TEACHER_NORM[1])}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": NATIVE_VIT_CFG,
                                                               "preprocess_cfg": preprocess}))
    return state


def reference_tokens(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Teacher-normalised images [B,3,T,T] → projected patch tokens [B, (T/patch)², D], from the tower's parts."""
    if hasattr(visual, "trunk"):  # timm tower: features, the pooled path's norm per token, the projection head
        trunk = visual.trunk
        tokens = trunk.forward_features(images)[:, trunk.num_prefix_tokens:]
        return visual.head(trunk.fc_norm(tokens))
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # [B, h*w, width]
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    x = visual.ln_post(visual.transformer(x))
    return x[:, 1:] @ visual.proj  # drop the class token; project into the joint space


def reference_targets(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Student-normalised images [B,3,S,S] → targets [B, 16, D] on the student's 4x4 grid."""
    (mean_s, std_s), (mean_t, std_t) = [(torch.tensor(m).view(1, 3, 1, 1), torch.tensor(s).view(1, 3, 1, 1))
                                        for m, s in (STUDENT_NORM, TEACHER_NORM)]
    pixels = images * std_s + mean_s
    x = F.interpolate((pixels - mean_t) / std_t, size=(TEACHER_SIZE, TEACHER_SIZE), mode="bicubic",
                      align_corners=False)
    tokens = reference_tokens(visual, x)
    side = TEACHER_SIZE // PATCH
    grid = tokens.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)  # [B, D, 2, 2]
    grid = F.interpolate(grid, size=STUDENT_GRID, mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)
