"""Stage 1 reproduces itself: two runs of the same command and seed log identical losses, whatever
PYTHONHASHSEED the interpreter drew (the demo does not pin it) and with a loader worker; and a run
SIGKILLed mid-training resumes (`--resume auto`) to the losses and student trunk of one never stopped.
(torch seeds its global RNG at random at start-up: a model built before the engine's seed would differ run
to run; the student is built in `MimTask.build_model`, after it.)"""
from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.artifacts import TRUNK_FILE, complete_checkpoints
from tests.support.launch import ROOT, kill_when_logged, subprocess_env
from tests.support.run_records import assert_resumed_exactly, losses
from tests.support.teachers import save_native_vit_folder
from tests.support.tiny import stage1_args

pytestmark = pytest.mark.slow
STEPS = ["train.steps=8", "train.save_every=3", "probe=false", "data.num_workers=1"]


def stage1_command(fmnist_shards: Path, out: Path, teacher: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stage1_mim.train", *stage1_args(fmnist_shards, out, teacher, *STEPS, *extra)]


@dataclass
class Stage1Runs:
    reference: Path                  # uninterrupted, PYTHONHASHSEED=1
    first_losses: dict[int, float]   # what the other run logged before it was killed (PYTHONHASHSEED=2)
    resumed: Path                    # that run, SIGKILLed after step 4, resumed under PYTHONHASHSEED=3


@pytest.fixture(scope="module")
def stage1_runs(fmnist_shards, tmp_path_factory) -> Stage1Runs:
    tmp = tmp_path_factory.mktemp("stage1_repro")
    save_native_vit_folder(tmp / "teacher")
    reference, killed = tmp / "reference", tmp / "killed"
    subprocess.run(stage1_command(fmnist_shards, reference, tmp / "teacher"), cwd=ROOT,
                   env=subprocess_env(PYTHONHASHSEED="1"), check=True, capture_output=True, timeout=600)
    proc = subprocess.Popen(stage1_command(fmnist_shards, killed, tmp / "teacher"), cwd=ROOT,
                            env=subprocess_env(PYTHONHASHSEED="2"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_logged(proc, killed, step=4)
    assert proc.returncode == -signal.SIGKILL
    assert complete_checkpoints(killed)[-1].name == "step_00000003"  # the step-6 one never completed
    first_losses = losses(killed)
    subprocess.run(stage1_command(fmnist_shards, killed, tmp / "teacher", "--resume", "auto"), cwd=ROOT,
                   env=subprocess_env(PYTHONHASHSEED="3"), check=True, capture_output=True, timeout=600)
    return Stage1Runs(reference, first_losses, killed)


def test_two_stage1_runs_of_one_command_log_identical_losses_whatever_the_hash_seed(stage1_runs):
    reference = losses(stage1_runs.reference)
    assert len(stage1_runs.first_losses) >= 4
    assert stage1_runs.first_losses == {s: reference[s] for s in stage1_runs.first_losses}


def test_stage1_sigkill_then_resume_equals_the_uninterrupted_run(stage1_runs):
    assert_resumed_exactly(stage1_runs.resumed, stage1_runs.reference, from_step=3, weights_file=TRUNK_FILE)
