"""Fixtures of the end-to-end tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.launch import run_script


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory) -> Path:
    """scripts/demo.py --quick with seeds 0 and 1: its output folder."""
    out, data = tmp_path_factory.mktemp("demo") / "demo", tmp_path_factory.mktemp("data")
    run_script("scripts/demo.py", "--quick", "--out", str(out), "--data", str(data), "--seeds", "0", "1")
    return out
