"""scripts/reference_teacher.py end to end: a reference teacher is made once, reused while its key matches,
made anew for another key, and its export loads in stock open_clip. Marked slow (three short runs)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch import run_script, subprocess_env

pytestmark = pytest.mark.slow


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
