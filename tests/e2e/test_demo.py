"""The demo and the own-data recipe in miniature (scripts/demo.py, scripts/recipe.py --quick): the steps fit
together end to end. The demo: reference teacher (cached) → stage 1 on the image pool → stage 2 --init and
the equal-student control on N caption pairs → export → open_clip eval → report, and the bootstrapped-teacher
counter-case beside it. The recipe: an image folder (scikit-learn's digits, written by the test) with the
demo's teacher given. The reference-teacher script: made once, reused while its key matches. Marked slow."""
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
    cache = tmp_path_factory.mktemp("teachers")
    run_script("scripts/demo.py", "--quick", "--out", str(out), "--data", str(data), "--seeds", "0", "1",
               "--teacher-cache", str(cache))
    return out


def test_quick_demo_runs_the_reference_regime_and_the_counter_case(quick_demo):
    results = json.loads((quick_demo / "results.json").read_text())
    groups = results["captions"]["128"]
    for group, seeds in (("init", 2), ("scratch_equal_student", 2), ("init_sigmoid", 1)):
        top1 = groups[group]["zero_shot_top1"]
        assert len(top1) == seeds and all(0.0 <= v <= 1.0 for v in top1)
        assert all(c > 0 for c in groups[group]["cpu_s"])
    assert groups["init"]["student_steps"] == 6 and groups["init"]["total_steps"] == 10  # reference: 4 steps
    assert groups["scratch_equal_student"]["steps"] == [6, 6] and "scratch" not in groups
    assert results["teacher"]["reference"] and results["teacher"]["made_now"] and results["teacher"]["steps"] == 4
    assert 0.0 <= results["teacher_eval"]["zeroshot_top1"] <= 1.0 and results["stage1"]["steps"] == 3
    check = results["stage1_check"]
    assert check["gain"] == pytest.approx(check["masked_cos"] - check["image_blind_cos"], abs=2e-4)
    export = results["export_eval"]
    assert export["zeroshot_top1"] == pytest.approx(groups["init"]["zero_shot_top1"][0], abs=1e-6)
    counter = json.loads((quick_demo / "bootstrap" / "results.json").read_text())["captions"]["128"]
    assert list(counter) == ["init"] and counter["init"]["total_steps"] == 9  # bootstrapped teacher: 3 steps
    demo = (quick_demo / "demo.md").read_text()
    assert "reference, 4 steps" in demo and "bootstrapped (counter-case), 3 steps" in demo
    assert "made by this run" in demo
    for name in ("zeroshot_vs_captions.png", "export/open_clip_config.json", "report.md"):
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
