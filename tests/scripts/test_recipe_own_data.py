"""scripts/recipe_own_data.sh: an input that is neither a folder nor a CSV is one line on stderr, exit status 2."""
from __future__ import annotations

import subprocess

from tests.support.launch import ROOT, subprocess_env


def test_recipe_script_rejects_a_missing_input_in_one_line(tmp_path):
    proc = subprocess.run(["bash", "scripts/recipe_own_data.sh", str(tmp_path / "nothing")], cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "neither a folder nor a CSV" in proc.stderr
