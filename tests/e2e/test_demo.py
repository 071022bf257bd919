"""The demo in miniature (scripts/demo.py --quick): teacher → stage 1 → stage 2 --init / scratch controls →
export → open_clip eval → report; the steps fit together end to end."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


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
