"""Fixtures of the multi-process tests."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.launch import LINEAR_RUN, ROOT, linear_run, subprocess_env


@pytest.fixture(scope="session")
def uninterrupted_linear_run(tmp_path_factory):
    """nproc → the linear task's `LINEAR_RUN` trained without interruption on nproc processes (made once
    per session): what every fault-and-resume test of that run must reproduce bit for bit."""
    made: dict[int, Path] = {}

    def get(nproc: int) -> Path:
        if nproc not in made:
            out = tmp_path_factory.mktemp(f"uninterrupted_{nproc}") / "run"
            subprocess.run(linear_run(nproc, out, *LINEAR_RUN), cwd=ROOT, env=subprocess_env(), check=True,
                           capture_output=True, timeout=600)
            made[nproc] = out
        return made[nproc]
    return get
