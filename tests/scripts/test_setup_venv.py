"""scripts/setup_venv.sh profiles, read from its --dry-run (nothing is installed): the default pins the
project's torch; `--gpu` pins the torch/torchvision pair PyPI's xformers 0.0.35 was built for (torch 2.10:
beside another torch its kernels do not load), installs that xformers and checks it."""
from __future__ import annotations

import subprocess

import pytest

from tests.support.launch import ROOT


def dry_run(*args: str) -> list[str]:
    """The commands setup_venv.sh would run (each printed as `+ COMMAND`, possibly over several lines)."""
    proc = subprocess.run(["bash", "scripts/setup_venv.sh", "--dry-run", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [c.split("\n[setup]")[0].strip() for c in ("\n" + proc.stdout).split("\n+ ")[1:]]


def pip_installs(commands: list[str]) -> list[str]:
    return [c for c in commands if " -m pip install " in c and "--upgrade pip" not in c]


def test_default_profile_pins_the_project_torch_first():
    torch_first, project = pip_installs(dry_run())
    assert torch_first.endswith("install -q torch==2.14.1 torchvision==0.29.1")
    assert "-c .venv/torch-constraints.txt -e .[dev]" in project and "xformers" not in project


def test_gpu_profile_pins_the_torch_xformers_was_built_for_and_checks_its_kernels():
    commands = dry_run("--gpu")
    torch_first, project = pip_installs(commands)
    assert torch_first.endswith("install -q torch==2.10.0 torchvision==0.25.0")
    assert project.endswith("-c .venv/torch-constraints.txt -e .[dev] xformers==0.0.35")
    assert any(c.endswith("-m xformers.info") for c in commands)
    assert any("xformers_unavailable_reason" in c for c in commands)  # evaclip's kernel probe, as `auto` runs it


@pytest.mark.parametrize("arg", ["--cpu", "gpu"])
def test_unknown_argument_is_a_one_line_error(arg):
    proc = subprocess.run(["bash", "scripts/setup_venv.sh", arg], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--gpu" in proc.stderr
