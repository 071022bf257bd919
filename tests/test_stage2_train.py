"""Stage 2 end to end on real (tiny) Fashion-MNIST shards: train, eval, resume, --init, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from common.metrics_log import read_metrics
from stage2_contrastive.train import main
from tests.launch import ROOT, subprocess_env

CONFIG = "configs/stage2/fmnist_tiny.yaml"


def losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_stage2_trains_evaluates_and_writes_weights(stage2_overrides, tmp_path, loss):
    assert main(["--config", CONFIG, f"loss={loss}", "train.steps=4", *stage2_overrides]) == 0
    run = tmp_path / "run"
    records = read_metrics(run)
    assert len(losses(run)) == 4
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["zeroshot_top1"] <= 1.0 and evals[-1]["n"] == 128  # the final eval covers the whole split
    assert {"i2t_R@1", "t2i_R@10"} <= set(evals[-1])
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    config = json.loads((run / "open_clip_config.json").read_text())
    assert ("init_logit_bias" in config["model_cfg"]) == (loss == "sigmoid")


def test_stage2_resume_continues_identically(stage2_overrides, tmp_path):
    args = ["--config", CONFIG, "train.steps=6", "train.save_every=3", *stage2_overrides]
    assert main(args) == 0
    full = losses(tmp_path / "run")
    crashed = [a.replace(str(tmp_path / "run"), str(tmp_path / "crashed")) for a in args]
    assert main([*crashed, "train.steps=6"]) == 0
    import shutil
    shutil.rmtree(tmp_path / "crashed" / "checkpoints" / "step_00000006")  # as if killed after step 3's save
    assert main([*crashed, "--resume", "auto"]) == 0
    assert losses(tmp_path / "crashed") == full


@pytest.mark.parametrize("override, message", [
    ("loss=hinge", "use one of: 'softmax', 'sigmoid'"),
    ("data.train_shards=/nonexistent/shards", "no shards match"),
    ("model.text.vocab_size=1000", "does not match the CLIP BPE tokenizer"),
    ("data.image_size=30", "not divisible by the patch size 14"),
])
def test_bad_input_is_one_line_error(stage2_overrides, capsys, override, message):
    assert main(["--config", CONFIG, *stage2_overrides, override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_zero_stage_that_does_not_exist_is_one_line_error(stage2_overrides, capsys, tmp_path):
    ds = tmp_path / "zero5.json"
    ds.write_text('{"zero_optimization": {"stage": 5}}')
    assert main(["--config", CONFIG, *stage2_overrides, f"train.deepspeed={ds}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "ZeRO stage 5" in err and "use 0, 1, 2 or 3" in err and len(err.splitlines()) == 1


def test_two_processes_under_accelerate_launch(stage2_overrides, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(__import__("tests.launch", fromlist=["free_port"]).free_port()),
           "-m", "stage2_contrastive.train", "--config", CONFIG, "train.steps=2", *stage2_overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "batch_size: 8" in config
    world = [r for r in read_metrics(tmp_path / "run") if "loss" in r][-1]
    assert world["world_size"] == 2


def test_per_tower_weight_decay_and_lr_reach_the_param_groups(stage2_overrides):
    from common.config import load_config
    from stage2_contrastive.config import Stage2Config
    from stage2_contrastive.task import ContrastiveTask
    cfg = load_config(Stage2Config, CONFIG, [*stage2_overrides, "optim.weight_decay=0.1", "model.text.weight_decay=0.02",
                                             "model.vision_weight_decay=0.3", "model.text.lr_scale=0.5"])
    task = ContrastiveTask(cfg)
    model = task.build_model()
    groups = {id(p): g for g in task.param_groups(model) for p in g["params"]}
    text_w = model.text.transformer.resblocks[0].mlp.c_fc.weight
    vision_w = model.visual.trunk.blocks[0].attn.qkv.weight
    assert (groups[id(text_w)]["weight_decay"], groups[id(text_w)]["lr_scale"]) == (0.02, 0.5)
    assert (groups[id(vision_w)]["weight_decay"], groups[id(vision_w)]["lr_scale"]) == (0.3, 1.0)
    assert groups[id(model.visual.trunk.blocks[0].norm1.weight)]["weight_decay"] == 0.0  # 1-D: never decayed
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)
