"""scripts/recipe.py, the recipe's plan: which runs it makes, with how many steps, and that the stage-1 check
runs right after stage 1. Pure planning: nothing is trained here."""
from __future__ import annotations

from scripts.recipe import Recipe, Sizes, plan


def runs(recipe: Recipe) -> dict[str, list[str]]:
    return {step.name: list(step.args) for step in plan(recipe)}


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


def test_recipe_runs_the_stage1_check_after_stage1(tmp_path):
    names = [step.name for step in plan(Recipe("folder:/x", tmp_path / "out", tmp_path / "data", SIZES))]
    assert names.index("stage1_check") == names.index("stage1") + 1


def test_each_step_comes_after_the_steps_whose_output_it_reads(tmp_path):
    """What lets `--jobs 2` run steps side by side safely (the runner starts a step once its `after` finished).
    Mutation checked: the report listed after the students only (not the export's eval) — this test fails."""
    made = {s.name: set(s.after) for s in plan(Recipe("folder:/x", tmp_path / "out", tmp_path / "data", SIZES,
                                                      captions=(200,)))}
    assert made["report"] == set(made) - {"report"}
    assert made["teacher"] == {"captions_200"} and made["teacher_export"] == {"teacher"}
    assert made["stage1"] == {"pool", "teacher_export"} and made["stage1_check"] == {"stage1"}
    assert made["captions_200/init_seed0"] == {"captions_200", "stage1"}
    assert made["captions_200/scratch_seed0"] == made["captions_200/scratch_equal_student_seed0"] == {"captions_200"}
    assert made["export"] == {"captions_200/init_seed0"} and made["export_eval"] == {"export"}
    reference = {s.name: set(s.after) for s in plan(Recipe("fashion-mnist", tmp_path / "ref", tmp_path / "data", SIZES,
                                                           teacher="reference"))}
    assert reference["teacher"] == {"data"} and reference["stage1"] == {"pool", "teacher"}
    assert reference["init_seed0"] == {"data", "stage1"} and reference["teacher_eval"] == {"data", "teacher"}
