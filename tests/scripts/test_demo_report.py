"""scripts/demo_report.py: the report's compute columns count stage 1 and the teacher into `--init` runs only."""
from __future__ import annotations

from scripts.demo_report import compute_steps


def test_report_counts_stage1_and_teacher_into_init_compute_only():
    extra = {"stage1": {"steps": 5}, "teacher": {"steps": 7}}
    assert compute_steps("init", 3, extra) == (8, 15)
    assert compute_steps("init_sigmoid", 3, extra) == (8, 15)
    assert compute_steps("scratch_equal_total", 15, extra) == (15, 15)
    assert compute_steps("init", 3, {"stage1": {"steps": 5}}) == (8, 8)  # a given teacher counts 0
