"""The own-data recipe in miniature (scripts/recipe.py --quick): an image folder (scikit-learn's digits, written
by the test) with the demo's exported teacher given."""
from __future__ import annotations

import json

import pytest

from tests.support.launch import run_script

pytestmark = pytest.mark.slow


def test_recipe_on_an_image_folder_with_a_given_teacher(quick_demo, tmp_path):
    from common.datasets.sklearn_digits import CLASSNAMES, write_digits_folder
    write_digits_folder(tmp_path / "digits")
    out, teacher = tmp_path / "run", f"local-dir:{quick_demo / 'teacher_export'}"
    run_script("scripts/recipe.py", "--source", f"folder:{tmp_path / 'digits'}", "--quick", "--out", str(out),
               "--data", str(tmp_path / "shards"), "--seeds", "0", "--teacher", teacher, "--sigmoid-seeds", "0",
               "--control-seeds", "0")
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["teacher"] == teacher and "teacher" not in results
    assert (tmp_path / "shards" / "classnames.txt").read_text().split() == sorted(CLASSNAMES)
    assert set(results) >= {"init", "scratch", "stage1", "stage1_check", "export_eval"}
    assert {"scratch_equal_student", "scratch_equal_total", "init_sigmoid"}.isdisjoint(results)
    assert results["init"]["total_steps"] == results["init"]["student_steps"] == 6  # the given teacher counts 0
    export = results["export_eval"]
    assert export["n"] == 128 and export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)
