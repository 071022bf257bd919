"""`train.compile` (common/train/compile.py): a compiled run trains, checkpoints, resumes, exports and `--init`s
exactly like an eager one (both stages on the tiny test models, in process through the CLI).

Backend: torch.compile's `aot_eager` (dynamo's graph capture + AOT autograd, the parts that decide what a
compiled step computes; no code generation). Inductor's code generation takes minutes to warm up on two
CPU cores: `scripts/bench/bench_train_step.py --compile blocks` measures it, with its loss after 3 steps vs eager.
Compiled code is cached in the process, so the runs here pay each block's compilation once."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import TRUNK_FILE, checkpoint_dir, complete_checkpoints
from common.export import export_open_clip
from stage1_mim.train import main as stage1_main
from stage2_contrastive.train import main as stage2_main
from tests.support.run_records import assert_resumed_exactly, loss_records, start_records
from tests.support.tiny import TINY_STAGE2, stage1_args

pytestmark = pytest.mark.slow

STEPS = 3
COMPILED = ("train.compile=blocks", "train.compile_backend=aot_eager")
# the tiny Eva has 12 blocks, the tiny text tower 2: each compiled, all sharing one graph per class
STAGE2_BLOCKS = 12 + 2


def stage2_run(out: Path, fmnist_shards: Path, *extra: str, resume: str = "") -> Path:
    args = ["--config", "configs/stage2/fmnist_tiny.yaml", f"train.output_dir={out}",
            f"data.train_shards={fmnist_shards / 'train'}", f"data.eval_shards={fmnist_shards / 'test'}",
            *TINY_STAGE2, "data.eval_max_samples=32", "data.final_eval_max_samples=32",
            f"train.steps={STEPS}", "train.save_every=2", *extra, *(["--resume", resume] if resume else [])]
    assert stage2_main(args) == 0
    return out


@pytest.fixture(scope="module")
def stage2_runs(fmnist_shards, tmp_path_factory) -> dict[str, Path]:
    """The same 3-step stage-2 run, eager and compiled (`blocks`)."""
    from torch._dynamo.utils import counters
    tmp = tmp_path_factory.mktemp("compile_stage2")
    runs = {"eager": stage2_run(tmp / "eager", fmnist_shards)}
    graphs = counters["stats"]["unique_graphs"]
    runs["compiled"] = stage2_run(tmp / "compiled", fmnist_shards, *COMPILED)
    assert counters["stats"]["unique_graphs"] > graphs, "the compiled run compiled no graph"
    return runs


def test_compiled_stage2_really_compiles_and_equals_eager(stage2_runs):
    start = start_records(stage2_runs["compiled"])[0]
    assert (start["compile"], start["compiled_modules"]) == ("blocks", STAGE2_BLOCKS)
    eager, compiled = loss_records(stage2_runs["eager"]), loss_records(stage2_runs["compiled"])
    assert [r["step"] for r in compiled] == [1, 2, 3]
    for name in ("loss", "grad_norm", "logit_scale"):
        assert [r[name] for r in compiled] == pytest.approx([r[name] for r in eager], rel=1e-5), name


def test_compiled_checkpoints_and_weights_keep_the_eager_names(stage2_runs):
    checkpoint = f"checkpoints/{checkpoint_dir('.', STEPS).name}"
    for file in ("model.safetensors", f"{checkpoint}/weights/model.safetensors", f"{checkpoint}/model.safetensors"):
        eager, compiled = (load_file(str(stage2_runs[k] / file)) for k in ("eager", "compiled"))
        assert sorted(compiled) == sorted(eager), file  # no `_orig_mod.` anywhere
        for key, value in eager.items():
            torch.testing.assert_close(compiled[key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compiled_run_resumes_exactly(stage2_runs, fmnist_shards, tmp_path):
    full = stage2_runs["compiled"]
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(complete_checkpoints(resumed)[-1])  # as if killed after the step-2 checkpoint
    stage2_run(resumed, fmnist_shards, *COMPILED, resume="auto")
    assert_resumed_exactly(resumed, full, from_step=2)


def test_compiled_stage1_equals_eager_and_its_trunk_inits_stage2(stage2_runs, fmnist_shards, tmp_path, caplog):
    teacher = export_open_clip(stage2_runs["compiled"], tmp_path / "teacher")  # the export of a compiled run
    runs = {}
    for name, extra in (("eager", ()), ("compiled", COMPILED)):
        runs[name] = tmp_path / name
        with caplog.at_level(logging.INFO, logger="evaclip"):
            assert stage1_main(stage1_args(fmnist_shards, runs[name], teacher, "train.steps=2", *extra)) == 0
    assert start_records(runs["compiled"])[0]["compiled_modules"] == 12  # the student's blocks
    assert "train.compile=blocks: teacher compiled (12 modules)" in caplog.text  # the teacher's vision blocks
    eager, compiled = loss_records(runs["eager"]), loss_records(runs["compiled"])
    assert [r["loss"] for r in compiled] == pytest.approx([r["loss"] for r in eager], rel=1e-5)
    trunk_eager, trunk_compiled = (load_file(str(runs[k] / TRUNK_FILE)) for k in ("eager", "compiled"))
    assert sorted(trunk_compiled) == sorted(trunk_eager)
    # stage 2 --init from the compiled student's trunk (strict loading), itself compiled: after one step at
    # lr 1e-3 its trunk is still within 1e-2 of the stage-1 trunk (a random init is ~1e-1 away)
    stage2_run(tmp_path / "init", fmnist_shards, *COMPILED, "train.steps=1", "--init", str(runs["compiled"]))
    trained = load_file(str(tmp_path / "init" / "model.safetensors"))
    moved = max((trained[f"visual.trunk.{k}"] - v).abs().max().item() for k, v in trunk_compiled.items()
                if k.startswith("blocks."))  # (the position embedding is resampled from 56 to 28 px)
    assert moved < 1e-2, moved
