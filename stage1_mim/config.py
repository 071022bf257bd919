"""Stage-1 config schema: student, frozen teacher, block masking, and the shared sections.
Value checks run in `validate()` at load time; checks of the disk, the registries, the machine and the
run (world size) in `validate_run`, before any model is built."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from common.config.sections import DataConfig, EvalConfig, OptimConfig, TrainConfig
from common.errors import ConfigError
from common.run_context import RunContext
from common.vision.attention import AttentionBackend, check_attention_backend
from common.vision.trunk import check_vision_config, patch_grid
from stage1_mim.masking import BlockMaskGenerator, check_mask_shape, num_masked_for_ratio


@dataclass
class StudentConfig:
    vision_model: str = "eva02_tiny_patch14_224"  # timm registered Eva name, the same as stage 2's tower
    # the pool of the stage-2 tower it initialises (model.vision_pool): decides which final norm the trunk
    # has and trains (token: `norm`; avg: `fc_norm` after the pool, `norm` an identity)
    global_pool: Literal["avg", "token"] = "avg"
    drop_path_rate: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})
    attention: AttentionBackend = "sdpa"
    grad_checkpointing: bool = False

    def validate_run(self, run: RunContext) -> None:
        check_attention_backend(self.attention)  # whether it can run on this machine


@dataclass
class TeacherConfig:
    """Any open_clip model: `local-dir:FOLDER` (e.g. this project's export) or a built-in name + weights."""
    model: str = ""
    weights: str = ""

    def validate(self) -> None:
        if not self.model:
            raise ConfigError("teacher.model is not set — pass teacher.model=local-dir:EXPORT_DIR (an open_clip "
                              "folder, e.g. from scripts/export_open_clip.py) or a built-in name + teacher.weights")


@dataclass
class MaskConfig:
    """BEiT/EVA block-wise masking on the student's patch grid (`ratio` checked against the grid)."""
    ratio: float = 0.4
    min_block: int = 4
    max_block: Optional[int] = None
    aspect: tuple[float, float] = (0.3, 3.3333333)

    def validate(self) -> None:
        check_mask_shape(self.min_block, self.max_block, self.aspect)

    def generator(self, grid: tuple[int, int]) -> BlockMaskGenerator:
        """The block-mask generator these settings describe on a patch grid of `grid` (rows, columns)."""
        return BlockMaskGenerator(grid, num_masked_for_ratio(grid, self.ratio), self.min_block, self.max_block,
                                  tuple(self.aspect))


@dataclass
class Stage1Config:
    student: StudentConfig = field(default_factory=StudentConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    probe: bool = True  # zero-shot probe of the student's tokens against the teacher's text embeddings
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(output_dir="runs/stage1"))
    optim: OptimConfig = field(default_factory=OptimConfig)

    def validate(self) -> None:
        num_masked_for_ratio(patch_grid(self.student.vision_model, self.data.image_size), self.mask.ratio)

    def validate_run(self, run: RunContext) -> None:
        """The timm registry (the student's name) and the data on disk."""
        from common.data.run_data import check_run_data
        check_vision_config(self.student.vision_model, self.data.image_size)
        check_run_data(self.data, self.eval, run)
