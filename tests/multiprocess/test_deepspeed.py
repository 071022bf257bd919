"""DeepSpeed ZeRO-1/2/3 through accelerate's plugin, 2 gloo processes on CPU.

One 3-step stage-2 run per ZeRO stage, checked against one plain 2-process run: DeepSpeed really ran at
the configured stage (the engine's start record, and DeepSpeed's own optimizer state on disk), its
checkpoint holds one optimizer shard per rank, its losses and gradient norms after ZeRO optimizer steps
equal the plain run's, and its consolidated weights are the plain run's trained weights. The NaN guard
runs on the tiny linear task under each stage, with a non-finite loss and a non-finite gradient. The
shipped offload config (ZeRO-3, optimizer and parameters offloaded to the CPU, the engine's own optimizer)
trains with contrastive accumulation exactly like the plain run.
"""
from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import complete_checkpoints
from common.errors import UnsafeFileError
from tests.support.launch import ROOT, subprocess_env, torchrun
from tests.support.run_records import loss_records, losses, start_records
from tests.support.tiny import TINY_STAGE2

pytestmark = pytest.mark.slow
CONFIG = "configs/stage2/fmnist_tiny.yaml"
STAGES = (1, 2, 3)
WORLD = 2
STEPS = 3  # steps 2 and 3 run on weights that ZeRO's optimizer stepped
# Plain and ZeRO runs reduce fp32 gradients in a different order (DDP's allreduce buckets vs ZeRO's
# flat partitions): measured, losses differ by <= 1.5e-6 at ~4 (4e-7 relative), grad norms by < 1e-7
# relative, weights by <= 8e-7. The tolerances sit >= 10x above that rounding noise and far below what
# one optimizer step changes (Adam moves each weight by ~lr = 1e-3).
RTOL = 1e-5
WEIGHT_ATOL = 1e-5


def zero_json(stage: int) -> str:
    return f"train.deepspeed=configs/deepspeed/zero{stage}.json"


def run_torchrun(*module_and_args: str) -> None:
    """Run a module under torchrun with WORLD gloo processes; fail with its output if it fails."""
    proc = subprocess.run(torchrun(WORLD, *module_and_args), cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


def train_stage2(out: Path, fmnist_shards: Path, *extra: str) -> Path:
    """A STEPS-step tiny stage-2 run on 2 processes (every step logged); returns its folder."""
    run_torchrun("stage2_contrastive.train", "--config", CONFIG, f"train.output_dir={out}",
                 f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
                 *TINY_STAGE2, "data.eval_max_samples=32", "data.final_eval_max_samples=32",
                 f"train.steps={STEPS}", *extra)
    return out


def assert_deepspeed_ran(run: Path, stage: int) -> None:
    """Every process of `run` trained under accelerate's DeepSpeed engine at ZeRO `stage`."""
    starts = [(r["distributed_type"], r["zero_stage"], r["world_size"]) for r in start_records(run)]
    assert starts == [("DEEPSPEED", stage, WORLD)], starts


def deepspeed_folder(run: Path) -> Path:
    """What DeepSpeed wrote into the run's newest checkpoint (accelerate's tag for the engine)."""
    from accelerate.utils.constants import MODEL_NAME
    return complete_checkpoints(run)[-1] / MODEL_NAME


def load_deepspeed_file(path: Path) -> dict[str, Any]:
    # DeepSpeed's own pickles (they hold its enums), written by the run this test just made
    return torch.load(path, map_location="cpu", weights_only=False)


def optimizer_shards(run: Path) -> list[dict[str, Any]]:
    """Each rank's ZeRO optimizer state dict from the newest checkpoint, rank 0 first."""
    from deepspeed.checkpoint.constants import OPTIMIZER_STATE_DICT
    folder = deepspeed_folder(run)
    return [load_deepspeed_file(folder / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")[OPTIMIZER_STATE_DICT]
            for rank in range(WORLD)]


def model_states_file(stage: int, rank: int = 0) -> str:
    """ZeRO-3 partitions the parameters, so each rank writes its own model states; ZeRO-1/2 write one."""
    return f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" if stage == 3 else "mp_rank_00_model_states.pt"


def assert_weights_close(a: Path, b: Path, atol: float) -> None:
    """The `model.safetensors` of two runs hold the same names and shapes, values within `atol`."""
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert wa[key].shape == wb[key].shape, (key, wa[key].shape, wb[key].shape)
        assert torch.allclose(wa[key], wb[key], rtol=0.0, atol=atol), (key, (wa[key] - wb[key]).abs().max())


@pytest.fixture(scope="module")
def plain_run(fmnist_shards, tmp_path_factory) -> Path:
    """The reference: the same STEPS steps on 2 processes under plain DDP (no DeepSpeed)."""
    run = train_stage2(tmp_path_factory.mktemp("plain"), fmnist_shards)
    assert [(r["distributed_type"], r["world_size"]) for r in start_records(run)] == [("MULTI_CPU", WORLD)]
    return run


@pytest.fixture(scope="module")
def zero_run(fmnist_shards, tmp_path_factory) -> Callable[[int], Path]:
    """stage → the folder of the ZeRO-`stage` run, trained once for all the tests that read it."""
    runs: dict[int, Path] = {}

    def get(stage: int) -> Path:
        if stage not in runs:
            runs[stage] = train_stage2(tmp_path_factory.mktemp(f"zero{stage}"), fmnist_shards, zero_json(stage))
        return runs[stage]
    return get


@pytest.mark.parametrize("stage", STAGES)
def test_zero_run_engages_deepspeed_at_the_configured_stage(zero_run, stage):
    run = zero_run(stage)
    assert_deepspeed_ran(run, stage)
    # what DeepSpeed's optimizer itself was, not just what the config asked for
    from deepspeed.checkpoint.constants import ZERO_STAGE
    assert [int(shard[ZERO_STAGE]) for shard in optimizer_shards(run)] == [stage] * WORLD


@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoint_splits_optimizer_state_across_ranks(zero_run, stage):
    from deepspeed.checkpoint.constants import FP32_FLAT_GROUPS, PARAM_SHAPES, SINGLE_PARTITION_OF_FP32_GROUPS
    run = zero_run(stage)
    folder = deepspeed_folder(run)
    expected = {f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" for rank in range(WORLD)}
    expected |= {model_states_file(stage, rank) for rank in range(WORLD)}
    assert {p.name for p in folder.iterdir()} == expected
    assert not (folder.parent / "optimizer.bin").exists()  # the plain (unsharded) optimizer file

    model_states = load_deepspeed_file(folder / model_states_file(stage))
    n_params = sum(math.prod(shape) for group in model_states[PARAM_SHAPES] for shape in group.values())
    module_numel = sum(t.numel() for t in model_states["module"].values())
    assert module_numel == (0 if stage == 3 else n_params)  # ZeRO-3: the parameters live in the shards
    for shard in optimizer_shards(run):  # each rank's fp32 master weights: half the parameters
        groups = shard[FP32_FLAT_GROUPS if stage == 3 else SINGLE_PARTITION_OF_FP32_GROUPS]
        assert abs(sum(g.numel() for g in groups) - n_params / WORLD) <= len(groups)  # + alignment padding


@pytest.mark.parametrize("stage", STAGES)
def test_zero_losses_and_grad_norms_after_optimizer_steps_equal_plain_run(plain_run, zero_run, stage):
    run = zero_run(stage)
    assert_deepspeed_ran(run, stage)
    zero, plain = loss_records(run), loss_records(plain_run)
    assert [r["step"] for r in zero] == [r["step"] for r in plain] == list(range(1, STEPS + 1))
    for z, p in zip(zero, plain):
        assert z["loss"] == pytest.approx(p["loss"], rel=RTOL), z["step"]
        assert z["grad_norm"] == pytest.approx(p["grad_norm"], rel=RTOL), z["step"]  # ranks' grads averaged


@pytest.mark.parametrize("stage", STAGES)
def test_zero_consolidated_weights_are_the_plain_run_trained_weights(plain_run, zero_run, stage):
    # trained weights: after STEPS steps at lr 1e-3 every tensor of the plain run is >= 1.8e-3 (max abs)
    # away from the initial one, so an export of the initial (or of partitioned, empty) ZeRO-3 weights fails
    run = zero_run(stage)
    assert_deepspeed_ran(run, stage)
    assert_weights_close(run, plain_run, WEIGHT_ATOL)


@pytest.mark.parametrize("stage", STAGES)
def test_zero_non_finite_loss_and_gradient_steps_are_skipped_and_counted(tmp_path, stage):
    # step 2: NaN loss (the engine poisons its gradients with NaN); step 3: finite loss, NaN gradients.
    # DeepSpeed steps inside `backward`: the engine must read that its ZeRO optimizer discarded both updates
    run_torchrun("tests.support.tasks.linear_task", str(tmp_path), "train.steps=4", "nan_at_steps=[2]",
                 "nan_grad_at_steps=[3]", zero_json(stage), "train.grad_clip=1.0")
    assert_deepspeed_ran(tmp_path, stage)
    records = loss_records(tmp_path)
    assert [r["bad_steps"] for r in records] == [0, 1, 2, 2]
    assert [math.isfinite(r["loss"]) for r in records] == [True, False, False, True]
    # DeepSpeed's own count: its optimizer ran 4 steps and skipped steps 2 and 3
    states = load_deepspeed_file(deepspeed_folder(tmp_path) / model_states_file(stage))
    assert (states["global_steps"], states["skipped_steps"]) == (4, 2)
    weights = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_zero3_offload_with_contrastive_accumulation_trains_like_the_plain_run(plain_run, fmnist_shards, tmp_path):
    """configs/deepspeed/zero3_offload.json with train.contrastive_accum=2 over micro-batches of 4: the
    losses and gradient norms of the plain run's batches of 8 (the same samples, scored as one batch)."""
    run = train_stage2(tmp_path, fmnist_shards, "train.deepspeed=configs/deepspeed/zero3_offload.json",
                       "train.batch_size=4", "train.contrastive_accum=2")
    assert_deepspeed_ran(run, 3)
    zero = load_deepspeed_file(deepspeed_folder(run) / model_states_file(3))["ds_config"]["zero_optimization"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    offloaded, plain = loss_records(run), loss_records(plain_run)
    assert [r["step"] for r in offloaded] == [r["step"] for r in plain] == list(range(1, STEPS + 1))
    for o, p in zip(offloaded, plain):
        assert o["loss"] == pytest.approx(p["loss"], rel=RTOL), o["step"]
        assert o["grad_norm"] == pytest.approx(p["grad_norm"], rel=RTOL), o["step"]


@pytest.mark.parametrize("stage", STAGES)
def test_zero_checkpoints_pass_the_tensors_only_check_and_a_poisoned_one_is_refused(zero_run, stage, tmp_path):
    # DeepSpeed's load_checkpoint unpickles its files with weights_only=False: the engine checks them first
    from common.train.checkpoint.resume import require_tensors_only_checkpoint
    from tests.support.payloads import poison
    checkpoint = complete_checkpoints(zero_run(stage))[-1]
    require_tensors_only_checkpoint(checkpoint, deepspeed=True)  # its enums, counters and loss scaler pass
    copy = tmp_path / "run" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, copy)
    marker = tmp_path / "payload_ran"
    poison(deepspeed_folder(tmp_path / "run") / model_states_file(stage), marker)
    with pytest.raises(UnsafeFileError, match=f"{model_states_file(stage)}' would import os.makedirs — refused"):
        require_tensors_only_checkpoint(copy, deepspeed=True)
    assert not marker.exists()


def test_zero2_resumes_exactly_with_the_schedule_from_the_json_marker(tmp_path):
    args = ("tests.support.tasks.linear_task", str(tmp_path), "train.steps=4", "train.save_every=2", zero_json(2))
    run_torchrun(*args)
    first = losses(tmp_path)
    run_torchrun(*args, "--resume", str(tmp_path / "checkpoints" / "step_00000002"))
    starts = [(r["step"], r["resumed_from"] and Path(r["resumed_from"]).name) for r in start_records(tmp_path)]
    assert starts == [(0, None), (2, "step_00000002")]
    assert losses(tmp_path) == first  # steps 3 and 4 trained again from the checkpoint: bit for bit
