"""The recipe's plan (scripts/recipe.py): which runs it makes, with how many steps, and the report's compute
columns (scripts/demo_report.py). Pure planning: nothing is trained here."""
from __future__ import annotations

import subprocess

import pytest
from pathlib import Path

from scripts.demo_report import compute_steps
from scripts.recipe import Recipe, Sizes, plan
from tests.support.launch import ROOT, subprocess_env


def runs(recipe: Recipe) -> dict[str, list[str]]:
    return {name: args for name, args, _ in plan(recipe)}


def steps_of(args: list[str]) -> int:
    return int(next(a for a in args if a.startswith("train.steps=")).split("=")[1])


SIZES = Sizes(teacher_steps=7, stage1_steps=5, stage2_steps=3, control_seeds=1, sigmoid_seeds=1)


def test_controls_match_stage2_student_and_total_compute(tmp_path):
    made = runs(Recipe("folder:/x", tmp_path / "out", tmp_path / "data", SIZES, seeds=(0, 1)))
    assert steps_of(made["teacher"]) == 7 and steps_of(made["stage1"]) == 5
    for seed in (0, 1):
        assert steps_of(made[f"init_seed{seed}"]) == steps_of(made[f"scratch_seed{seed}"]) == 3
        assert "--init" in made[f"init_seed{seed}"] and "--init" not in made[f"scratch_seed{seed}"]
    assert steps_of(made["scratch_equal_student_seed0"]) == 5 + 3
    assert steps_of(made["scratch_equal_total_seed0"]) == 7 + 5 + 3
    assert "--init" not in made["scratch_equal_total_seed0"]
    # controls and the sigmoid run for the first seed only, as sized
    assert {"scratch_equal_student_seed1", "scratch_equal_total_seed1", "init_sigmoid_seed1"}.isdisjoint(made)
    assert "loss=sigmoid" in made["init_sigmoid_seed0"]


def test_a_given_teacher_is_used_as_is_and_has_no_total_compute_control(tmp_path):
    made = runs(Recipe("folder:/x", tmp_path / "out", tmp_path / "data", SIZES, seeds=(0,),
                       teacher="local-dir:/teachers/big"))
    assert "teacher" not in made and "teacher_export" not in made
    assert "teacher.model=local-dir:/teachers/big" in made["stage1"]
    assert "scratch_equal_total_seed0" not in made and "scratch_equal_student_seed0" in made


def test_report_counts_stage1_and_teacher_into_init_compute_only():
    extra = {"stage1": {"steps": 5}, "teacher": {"steps": 7}}
    assert compute_steps("init", 3, extra) == (8, 15)
    assert compute_steps("init_sigmoid", 3, extra) == (8, 15)
    assert compute_steps("scratch_equal_total", 15, extra) == (15, 15)
    assert compute_steps("init", 3, {"stage1": {"steps": 5}}) == (8, 8)  # a given teacher counts 0


def test_recipe_script_rejects_a_missing_input_in_one_line(tmp_path):
    proc = subprocess.run(["bash", "scripts/recipe_own_data.sh", str(tmp_path / "nothing")], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "neither a folder nor a CSV" in proc.stderr


def test_image_blind_baseline_scores_position_constant_targets_as_perfect():
    import torch
    from scripts.stage1_check import image_blind_cos
    per_position = torch.randn(4, 8)                                    # [N, D]
    targets = per_position.expand(3, 4, 8) * torch.rand(3, 4, 1).add(0.5)  # same directions, any scale
    mask = torch.tensor([[True, False, False, True]] * 3)
    assert image_blind_cos(per_position, targets, mask).item() == pytest.approx(1.0, abs=1e-6)
    flipped = targets.clone()
    flipped[:, 0] *= -1                                                 # masked position 0 now opposite
    assert image_blind_cos(per_position, flipped, mask).item() == pytest.approx(0.0, abs=1e-6)
    flipped_unmasked = targets.clone()
    flipped_unmasked[:, 1] *= -1                                        # a visible position: not counted
    assert image_blind_cos(per_position, flipped_unmasked, mask).item() == pytest.approx(1.0, abs=1e-6)


def test_recipe_runs_the_stage1_check_after_stage1(tmp_path):
    names = [name for name, _, _ in plan(Recipe("folder:/x", tmp_path / "out", tmp_path / "data", SIZES))]
    assert names.index("stage1_check") == names.index("stage1") + 1
