"""Stage-1 config schema: student, frozen teacher, block masking, and the shared sections."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from common.config import ConfigError
from common.vit import check_vision_config
from common.sections import DataConfig, OptimConfig, TrainConfig


@dataclass
class StudentConfig:
    vision_model: str = "eva02_tiny_patch14_224"  # timm registered Eva name, the same as stage 2's tower
    drop_path_rate: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    attention: Literal["sdpa", "math", "xformers"] = "sdpa"
    grad_checkpointing: bool = False


@dataclass
class TeacherConfig:
    """Any open_clip model: `local-dir:FOLDER` (e.g. this project's export) or a built-in name + weights."""
    model: str = ""
    weights: str = ""


@dataclass
class MaskConfig:
    """BEiT/EVA block-wise masking on the student's patch grid."""
    ratio: float = field(default=0.4, metadata={"min": 0.0, "max": 1.0})
    min_block: int = field(default=4, metadata={"min": 1})
    max_block: Optional[int] = None
    aspect: tuple[float, float] = (0.3, 3.3333333)


@dataclass
class Stage1Config:
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    probe: bool = True  # zero-shot probe of the student's tokens against the teacher's text embeddings
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage1"))
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        check_vision_config(self.student.vision_model, self.data.image_size)
        if not self.teacher.model:
            raise ConfigError("teacher.model is not set — pass teacher.model=local-dir:EXPORT_DIR (an open_clip "
                              "folder, e.g. from scripts/export_open_clip.py) or a built-in name + teacher.weights")
        if not 0.0 < self.mask.ratio < 1.0:
            raise ConfigError(f"mask.ratio={self.mask.ratio} must be strictly between 0 and 1")
