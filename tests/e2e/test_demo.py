"""The demo and the own-data recipe in miniature (scripts/demo.py --quick, scripts/recipe.py --quick): the steps fit
together end to end. The demo: teacher → stage 1 → stage 2 --init / scratch controls → export → open_clip eval
→ report. The recipe: an image folder (scikit-learn's digits, written by the test) with the demo's exported
teacher given. The reference-teacher script: made once, reused while its key matches."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import run_script, subprocess_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """scripts/demo.py --quick with seeds 0 and 1: its output folder."""
    out, data = tmp_path_factory.mktemp("demo") / "demo", tmp_path_factory.mktemp("data")
    run_script("scripts/demo.py", "--quick", "--out", str(out), "--data", str(data), "--seeds", "0", "1")
    return out


def test_quick_demo_runs_end_to_end_with_both_compute_controls(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
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
    assert export["n"] == 128 and export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)
    report = (quick_demo / "report.md").read_text()
    assert "| scratch_equal_student | 1 | 6 | 6 | 6 |" in report and "| init | 2 | 3 | 6 | 9 |" in report
    for name in ("loss_curves.png", "zeroshot_vs_step.png", "export/open_clip_config.json"):
        assert (quick_demo / name).is_file(), name


def test_recipe_on_an_image_folder_with_a_given_teacher(quick_demo, tmp_path):
    from common.datasets.sklearn_digits import CLASSNAMES, write_digits_folder
    write_digits_folder(tmp_path / "digits")
    out, teacher = tmp_path / "run", f"local-dir:{(quick_demo / 'teacher_export').resolve()}"
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
    assert export["n"] == 128 and export["zeroshot_top1"] == pytest.approx(results["init"]["zero_shot_top1"][0], abs=1e-6)


def test_reference_teacher_script_reuses_its_cache_entry_only_for_the_same_key(fmnist_shards, tmp_path):
    """Mutation checked: `TeacherKey.digest` returning a constant (and `check_entry` not comparing keys)
    reuses the 2-step teacher for the 3-step request — this test fails."""
    def make(steps: int, out: str) -> dict:
        run_script("scripts/reference_teacher.py", "--shards", str(fmnist_shards / "train"), "--eval-shards",
                   str(fmnist_shards / "test"), "--out", str(tmp_path / out), "--steps", str(steps),
                   "--cache", str(tmp_path / "cache"), "--set", "data.num_workers=0", "train.batch_size=16",
                   "data.image_size=28", "model.text.layers=1", "train.progress=false", "data.final_eval_max_samples=64")
        return json.loads((tmp_path / out / "teacher.json").read_text())
    first, again, longer = make(2, "a"), make(2, "b"), make(3, "c")
    assert first["made_now"] and not again["made_now"] and longer["made_now"]
    assert first["entry"] == again["entry"] != longer["entry"] and again["cpu_s"] == first["cpu_s"] > 0
    assert (tmp_path / "b" / "teacher_export").resolve() == Path(first["entry"]) / "export"
    subprocess.run([sys.executable, "-c", "import open_clip; open_clip.create_model("
                    f"'local-dir:{tmp_path / 'b' / 'teacher_export'}')"], cwd=tmp_path, check=True,
                   env=subprocess_env(), capture_output=True, timeout=300)
