"""The demo and the own-data recipe in miniature (scripts/demo.py --quick, scripts/recipe.py --quick): the steps fit
together end to end. The demo: the reference regime (a reference teacher made into its cache → stage 1 on the
image pool → stage 2 --init and the equal-student control on a caption subset) and, in the same call, the
bootstrapped counter-case with every control → export → open_clip eval → reports. The recipe: an image folder
(scikit-learn's digits, written by the test) with the demo's exported teacher given."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.launch import run_script

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """scripts/demo.py --quick --counter-case with seeds 0 and 1, two steps at a time: its output folder."""
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo"
    run_script("scripts/demo.py", "--quick", "--counter-case", "--out", str(out), "--data", str(root / "data"),
               "--teacher-cache", str(root / "cache"), "--seeds", "0", "1", "--jobs", "2")
    return out


def test_quick_demo_headline_is_the_reference_regime_with_its_control(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    assert results["recipe"]["teacher"] == "reference" and results["recipe"]["captions"] == ["128"]
    assert results["teacher"]["reference"] and results["teacher"]["made_now"] and results["teacher"]["steps"] == 4
    groups = results["captions"]["128"]
    assert set(groups) == {"init", "scratch_equal_student"}
    assert len(groups["init"]["zero_shot_top1"]) == len(groups["scratch_equal_student"]["zero_shot_top1"]) == 2
    assert groups["scratch_equal_student"]["steps"] == [6, 6] and groups["init"]["student_steps"] == 6
    assert set(results["gaps"]) == {"128"} and "teacher_eval" in results
    export = results["export_eval"]
    assert export["zeroshot_top1"] == pytest.approx(groups["init"]["zero_shot_top1"][0], abs=1e-6)
    assert "made by this call" in (quick_demo / "demo.md").read_text()
    assert "| 128 | 2 |" in (quick_demo / "report.md").read_text()
    assert (quick_demo / "logs" / "stage1.log").is_file()  # two jobs: each step writes its own log


def test_quick_demo_counter_case_runs_every_control(quick_demo):
    results = json.loads((quick_demo / "bootstrap" / "results.json").read_text())
    for group, seeds in (("init", 2), ("scratch", 2), ("init_sigmoid", 1)):
        top1 = results[group]["zero_shot_top1"]
        assert len(top1) == seeds and all(0.0 <= v <= 1.0 for v in top1)
    assert results["stage1"]["steps"] == 3 and "probe_top1" in results["stage1"]
    assert results["teacher"]["steps"] == 3
    check = results["stage1_check"]
    assert check["gain"] == pytest.approx(check["masked_cos"] - check["image_blind_cos"], abs=2e-4)
    assert all(-1.0 <= check[k] <= 1.0 for k in ("masked_cos", "image_blind_cos", "visible_cos"))
    assert results["init"]["student_steps"] == 6 and results["init"]["total_steps"] == 9
    assert results["scratch_equal_student"]["steps"] == [6] and results["scratch_equal_total"]["steps"] == [9]
    export = results["export_eval"]
    assert export["n"] == 128
    assert export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)
    report = (quick_demo / "bootstrap" / "report.md").read_text()
    assert "| scratch_equal_student | 1 | 6 | 6 | 6 |" in report and "| init | 2 | 3 | 6 | 9 |" in report
    for name in ("loss_curves.png", "zeroshot_vs_step.png", "export/open_clip_config.json"):
        assert (quick_demo / "bootstrap" / name).is_file(), name


def test_recipe_on_an_image_folder_with_a_given_teacher(quick_demo, tmp_path):
    from common.datasets.sklearn_digits import CLASSNAMES, write_digits_folder
    write_digits_folder(tmp_path / "digits")
    out, teacher = tmp_path / "run", f"local-dir:{(quick_demo / 'bootstrap' / 'teacher_export').resolve()}"
    run_script("scripts/recipe.py", "--source", f"folder:{tmp_path / 'digits'}", "--quick", "--out", str(out),
               "--data", str(tmp_path / "shards"), "--seeds", "0", "--teacher", teacher, "--sigmoid-seeds", "0",
               "--control-seeds", "0")
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["teacher"] == teacher and "teacher" not in results
    assert (tmp_path / "shards" / "classnames.txt").read_text().split() == sorted(CLASSNAMES)
    assert set(results) >= {"init", "scratch", "stage1", "stage1_check", "export_eval", "teacher_eval"}
    assert {"scratch_equal_student", "scratch_equal_total", "init_sigmoid"}.isdisjoint(results)
    assert results["init"]["total_steps"] == results["init"]["student_steps"] == 6  # the given teacher counts 0
    export = results["export_eval"]
    assert export["n"] == 128
    assert export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)
