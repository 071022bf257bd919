"""`--resume` on another number of processes than wrote the checkpoint (issue 25, item 4), CPU and gloo.

One run of the linear task per mode (DDP; DeepSpeed ZeRO-1, 2, 3), in three segments of one 6-step
schedule (16 samples per step, a checkpoint every 2 steps): steps 1-2 on 2 processes (batch 8 each), then
`--resume auto` on 1 process (batch 16) for steps 3-4, then `--resume auto` on 2 processes for steps 5-6.
Each segment is `tests.multiprocess.resume_probe`, which dumps the consolidated training state (weights,
Adam's exp_avg / exp_avg_sq and step, param-group hyperparameters; gathered through DeepSpeed's own API under
ZeRO) after every checkpoint it writes and right after a resume loaded one. So each resume, 2 → 1 and
1 → 2, is checked against the state the previous segment saved, bit for bit; the run's records say where
each segment started, on how many processes, what its data stream drew and at which learning rates.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import CHECKPOINTS_DIR, checkpoint_dir, universal_dir
from common.config.schema import load_config
from common.errors import CheckpointError
from common.run_context import RunContext
from common.train.checkpoint.manifest import damaged_files
from common.train.checkpoint.resume import batch_fix
from common.train.checkpoint.universal import agreed_conversion
from common.train.engine import data_seed
from common.train.optim import warmup_cosine
from tests.support.launch import ROOT, linear_run, subprocess_env, torchrun
from tests.support.run_records import loss_records, start_records
from tests.support.tasks.linear_task import LinearConfig, LinearTask, run_linear

STEPS, SAVE_EVERY, SAMPLES_PER_STEP = 6, 2, 16
CHAIN = ((2, 0, 2), (1, 2, 4), (2, 4, 6))  # (processes, first step - 1, last step) of the three segments
SCHEDULE = [f"train.steps={STEPS}", f"train.save_every={SAVE_EVERY}", "train.keep_last=3",
            "optim.weight_decay=0.01"]  # two param groups (decay / no decay) with different hyperparameters
MODES = {"ddp": [], **{f"zero{s}": [f"train.deepspeed=configs/deepspeed/zero{s}.json"] for s in (1, 2, 3)}}
ADAM = ("param", "exp_avg", "exp_avg_sq")


def batch_for(nproc: int) -> str:
    return f"train.batch_size={SAMPLES_PER_STEP // nproc}"


@dataclass
class ChainRun:
    run_dir: Path
    dumps: Path
    stderr: list[str]  # of each segment


def launch(nproc: int, run_dir: Path, dumps: Path, *args: str) -> subprocess.CompletedProcess:
    """The probe on `nproc` processes under torchrun (1 too: DeepSpeed needs a launcher's environment)."""
    return subprocess.run(torchrun(nproc, "tests.multiprocess.resume_probe", str(run_dir), str(dumps), *args),
                          cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Callable[[str], ChainRun]:
    """mode → its three-segment run (2 → 1 → 2 processes), made once for every test that reads it."""
    made: dict[str, ChainRun] = {}

    def get(mode: str) -> ChainRun:
        if mode not in made:
            root = tmp_path_factory.mktemp(mode)
            run = ChainRun(root / "run", root / "dumps", [])
            for nproc, start, stop in CHAIN:
                resume = ["--resume", "auto"] if start else []
                proc = launch(nproc, run.run_dir, run.dumps, *SCHEDULE, *MODES[mode], batch_for(nproc),
                              "--stop-at", str(stop), *resume)
                assert proc.returncode == 0, f"{mode}, segment on {nproc}: " + proc.stderr[-4000:]
                run.stderr.append(proc.stderr)
            made[mode] = run
        return made[mode]
    return get


def assert_same_state(resumed: dict, saved: dict) -> None:
    """Weights and Adam moments of every parameter bit-identical, the same Adam step, the same param groups."""
    assert (resumed["step"], resumed["adam_steps"]) == (saved["step"], saved["adam_steps"])
    assert resumed["params"].keys() == saved["params"].keys()
    differ = [(name, key, float((r[key] - saved["params"][name][key]).abs().max()))
              for name, r in resumed["params"].items() for key in ADAM
              if not torch.equal(r[key], saved["params"][name][key])]
    assert not differ, f"{len(differ)} tensors differ from the checkpoint's: {differ[:4]}"
    # the moments are real ones: two Adam steps have left every exp_avg_sq above zero somewhere
    assert all(float(p["exp_avg_sq"].abs().max()) > 0 for p in saved["params"].values())
    assert resumed["param_groups"] == saved["param_groups"]


def dumped(run: ChainRun, when: str, step: int) -> dict:
    return torch.load(run.dumps / f"{when}_step{step}.pt")


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_2_to_1_process_restores_weights_and_adam_moments(chain, mode):
    run = chain(mode)
    resumed, saved = dumped(run, "resumed", 2), dumped(run, "saved", 2)
    assert (saved["world_size"], resumed["world_size"]) == (2, 1)
    assert_same_state(resumed, saved)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_1_to_2_processes_restores_weights_and_adam_moments(chain, mode):
    run = chain(mode)
    resumed, saved = dumped(run, "resumed", 4), dumped(run, "saved", 4)
    assert (saved["world_size"], resumed["world_size"]) == (1, 2)
    assert_same_state(resumed, saved)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_resume_on_other_world_size_is_recorded_and_logged(chain, mode):
    run = chain(mode)
    starts = [(r["step"], r["resumed_from"] and Path(r["resumed_from"]).name, r["world_size"],
               r["resumed_from_world_size"], r["batch"]["samples_per_step"]) for r in start_records(run.run_dir)]
    assert starts == [(0, None, 2, None, 16), (2, checkpoint_dir(".", 2).name, 1, 2, 16),
                      (4, checkpoint_dir(".", 4).name, 2, 1, 16)], starts
    seed = load_config(LinearConfig, None, []).train.seed
    for step in (2, 4):  # rank 0's RNGs seeded from (seed, step, rank), its accumulation counter at the boundary
        resumed = dumped(run, "resumed", step)
        assert resumed["torch_seed"] == ((seed * 1_000_003 + step) * 1_009 + 0) % 2**32
        assert resumed["accumulation_counter"] == step  # one backward pass per step
    assert "resumed on 1 processes from 2" in run.stderr[1]
    assert "resumed on 2 processes from 1" in run.stderr[2]
    if mode != "ddp":  # DeepSpeed's universal checkpoint was made, loaded, and removed
        assert "through DeepSpeed's universal checkpoint" in run.stderr[1]
        assert "through DeepSpeed's universal checkpoint" in run.stderr[2]
    assert sorted(p.name for p in (run.run_dir / CHECKPOINTS_DIR).iterdir()) == [
        checkpoint_dir(".", s).name for s in (2, 4, 6)]  # no universal folder left, the originals kept
    for step in (2, 4):  # the checkpoints resumed from were only read: each still matches its manifest
        assert damaged_files(checkpoint_dir(run.run_dir, step)) == []
    weights = load_file(str(run.run_dir / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_data_stream_and_lr_schedule_continue_across_world_sizes(chain, mode):
    """Each segment's rank-0 batches are those of the stream seeded from (train.seed, its first step) at its
    batch size (the linear task logs the sum of the batch each step drew), and every step's lr is the one
    warmup + cosine gives at that step: the scheduler continued, it did not restart."""
    run = chain(mode)
    records = loss_records(run.run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    expected_sums = []
    for nproc, start, stop in CHAIN:
        cfg = load_config(LinearConfig, None, [batch_for(nproc)])
        context = RunContext(rank=0, world_size=nproc, device=torch.device("cpu"),
                             micro_batch=SAMPLES_PER_STEP // nproc, grad_accum=1, precision="fp32", deepspeed=False)
        stream = iter(LinearTask(cfg, context).train_batches(data_seed(cfg.train.seed, start)))
        expected_sums += [float(next(stream)["x"].sum()) for _ in range(stop - start)]
    assert [r["batch_sum"] for r in records] == expected_sums
    optim = load_config(LinearConfig, None, SCHEDULE).optim
    expected_lr = [optim.lr * warmup_cosine(step, STEPS, optim.warmup_steps, optim.min_lr_ratio)
                   for step in range(1, STEPS + 1)]  # logged after the step: the lr of the next one
    assert [r["lr"] for r in records] == pytest.approx(expected_lr, rel=1e-12, abs=0.0)


@pytest.mark.slow
def test_resume_on_one_process_of_a_two_process_checkpoint_is_deterministic(chain, tmp_path):
    """Twice from the same 2-process DDP checkpoint on 1 process: the same losses (the linear model has
    dropout: each rank's RNGs are seeded from (seed, step, rank) on another world size) and weights."""
    checkpoint = checkpoint_dir(chain("ddp").run_dir, 2)
    runs = []
    for name in ("first", "second"):
        records = run_linear(tmp_path / name, *SCHEDULE, batch_for(1), resume=str(checkpoint))
        runs.append(([(r["step"], r["loss"]) for r in records if "loss" in r],
                     load_file(str(tmp_path / name / "model.safetensors"))))
    (first_losses, first_weights), (second_losses, second_weights) = runs
    assert [s for s, _ in first_losses] == list(range(3, STEPS + 1))
    assert first_losses == second_losses
    assert all(torch.equal(first_weights[k], second_weights[k]) for k in first_weights)


@pytest.mark.slow
def test_resume_with_another_batch_names_the_fix_for_this_world_size_before_any_model(chain, tmp_path):
    """A 2-process checkpoint (16 samples per step) resumed on 1 process with batch 8, then with batch 16 but
    grad_accum 2: one line naming what to set on 1 process; the task (which builds the model) is never made."""
    checkpoint = checkpoint_dir(chain("ddp").run_dir, 2)
    made: list[RunContext] = []

    def refused(*overrides: str) -> str:
        from common.train.engine import train
        cfg = load_config(LinearConfig, None, [f"train.output_dir={tmp_path / 'run'}", *SCHEDULE, *overrides])
        with pytest.raises(CheckpointError) as err:
            train(cfg, lambda run: made.append(run) or LinearTask(cfg, run), resume=str(checkpoint))
        return str(err.value)

    message = refused("train.batch_size=8")
    assert "it was trained with samples_per_step=16, this run has samples_per_step=8" in message
    assert ("checkpoint trained 16 samples per step (contrastive batch 16) on 2 processes; on 1 process set "
            "train.batch_size=16") in message
    message = refused("train.batch_size=16", "train.grad_accum=2")
    assert "on 1 process set train.grad_accum=1 to resume it" in message
    assert "\n" not in message and not made

    # through the CLI: exit status 2, one line on stderr
    proc = subprocess.run(linear_run(1, tmp_path / "cli", *SCHEDULE, "train.batch_size=8", "--resume",
                                     str(checkpoint)), cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "on 1 process set train.batch_size=16" in errors[0], proc.stderr[-2000:]


def context(world_size: int, micro_batch: int, grad_accum: int = 1, contrastive_accum: int = 1) -> RunContext:
    return RunContext(rank=0, world_size=world_size, device=torch.device("cpu"), micro_batch=micro_batch,
                      grad_accum=grad_accum, precision="fp32", deepspeed=False, contrastive_accum=contrastive_accum)


def test_batch_fix_names_the_settings_for_this_world_size():
    saved = {"steps": 6, "samples_per_step": 64, "contrastive_batch": 32}  # 2 processes × 16, grad_accum 2
    assert batch_fix(saved, 2, context(1, 16, grad_accum=2)) == (
        "checkpoint trained 64 samples per step (contrastive batch 32) on 2 processes; on 1 process set "
        "train.batch_size=32 (or train.contrastive_accum=2 at train.batch_size=16, in a stage that scores "
        "contrastive batches) to resume it")
    assert batch_fix(saved, 2, context(4, 16, grad_accum=1)) == (
        "checkpoint trained 64 samples per step (contrastive batch 32) on 2 processes; on 4 processes set "
        "train.batch_size=8 and train.grad_accum=2 to resume it")
    # contrastive accumulation kept where it divides the per-process share, else dropped
    assert batch_fix(saved, 2, context(4, 2, grad_accum=2, contrastive_accum=2)).endswith(
        "on 4 processes set train.batch_size=4 to resume it")
    assert batch_fix(saved, 2, context(4, 2, grad_accum=2, contrastive_accum=3)).endswith(
        "on 4 processes set train.batch_size=8 and train.contrastive_accum=1 to resume it")


def test_batch_fix_says_when_the_contrastive_batch_does_not_divide_over_the_processes():
    saved = {"steps": 6, "samples_per_step": 16, "contrastive_batch": 16}
    assert batch_fix(saved, 2, context(3, 5)) == (
        "checkpoint trained 16 samples per step (contrastive batch 16) on 2 processes: 16 do not divide over 3 "
        "processes — resume on a number of processes that divides 16 (1, 2, 4, 8, 16)")
    assert batch_fix({"samples_per_step": 12}, None, context(5, 2)).startswith(
        "checkpoint trained 12 samples per step (contrastive batch 12): 12 do not divide over 5 processes")


@pytest.mark.slow
def test_stage2_resumes_on_one_process_with_contrastive_accumulation(fmnist_shards, tmp_path):
    """Stage 2 (softmax CLIP) checkpointed at step 1 on 2 processes × batch 4 (contrastive batch 8) resumes on
    1 process with batch 4 × contrastive_accum 2 — the same 8 pairs per loss in the memory of batch 4, the
    fix the batch error names. Two backward passes per step now, one then: accelerate's accumulation
    counter (saved in each rank's RNG file as 1) must be set at the step's boundary, or the engine stops
    with 'accelerate's accumulation counter is out of step'."""
    from tests.support.tiny import TINY_STAGE2
    run_dir = tmp_path / "run"
    common = ["--config", "configs/stage2/fmnist_tiny.yaml", f"train.output_dir={run_dir}",
              f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
              *TINY_STAGE2, "data.eval_max_samples=32", "data.final_eval_max_samples=32", "train.steps=3",
              "train.save_every=1", "train.keep_last=3", "train.batch_size=4"]
    first = subprocess.run(torchrun(2, "stage2_contrastive.train", *common), cwd=ROOT, env=subprocess_env(),
                           capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = subprocess.run([*torchrun(1, "stage2_contrastive.train", *common), "train.contrastive_accum=2",
                              "--resume", str(checkpoint_dir(run_dir, 1))], cwd=ROOT, env=subprocess_env(),
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    starts = [(r["step"], r["world_size"], r["resumed_from_world_size"], r["batch"]["contrastive_batch"],
               r["batch"]["contrastive_accum"]) for r in start_records(run_dir)]
    assert starts == [(0, 2, None, 8, 1), (1, 1, 2, 8, 2)], starts
    records = loss_records(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["loss"] == r["loss"] and r["bad_steps"] == 0 for r in records)  # finite, nothing skipped
    assert "resumed on 1 processes from 2" in resumed.stderr


def test_a_checkpoint_deepspeed_cannot_convert_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    if not torch.cuda.is_available():
        monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    checkpoint = checkpoint_dir(tmp_path / "run", 2)
    (checkpoint / "pytorch_model").mkdir(parents=True)  # DeepSpeed's folder without a ZeRO shard in it
    main_process = SimpleNamespace(is_main_process=True)
    with pytest.raises(CheckpointError, match=r"step_00000002: DeepSpeed could not convert it to a universal "
                       r"checkpoint \(FileNotFoundError: can't find \*_optim_states.pt files") as err:
        agreed_conversion(main_process, checkpoint, universal_dir(tmp_path / "run", checkpoint), 60.0)
    assert "\n" not in str(err.value)
    assert [p.name for p in checkpoint.parent.iterdir()] == [checkpoint.name]
