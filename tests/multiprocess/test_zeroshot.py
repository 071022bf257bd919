"""Stage 2's held-out evaluation (stage2_contrastive/zeroshot.py) on 2 gloo processes under torchrun
(tests/support/tasks/zeroshot_eval.py): the same metrics, losses included, as one process."""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.tasks.zeroshot_eval import CASES, LOSSES, evaluate_case


@pytest.mark.slow
def test_two_process_eval_equals_one_process(tmp_path):
    """torchrun, 2 gloo processes, each evaluating its uneven slice (14 / 12 rows of the random case) or
    its round-robin share (caption-only case): the summed counts and the features, gathered and put back
    in the split's order, give exactly the single-process metrics, losses included."""
    proc = subprocess.run(torchrun(2, "tests.support.tasks.zeroshot_eval", str(tmp_path)), cwd=ROOT,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "metrics_world2.json").read_text())
    assert set(two) == {f"{name}/{loss}" for name in CASES for loss in LOSSES}
    for name, make in CASES.items():
        case = make()
        assert case.round_robin or [len(case.rows(r, 2)) for r in range(2)] != [len(case.captions) / 2] * 2
        for loss in LOSSES:
            assert two[f"{name}/{loss}"] == pytest.approx(evaluate_case(case, loss=loss), abs=1e-12), name
