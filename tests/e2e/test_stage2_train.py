"""Stage 2 end to end on real (tiny) Fashion-MNIST shards: it learns, evaluates and writes weights, resumes
exactly with loader workers (skip count included), two processes, bad input."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from common.artifacts import read_metrics
from common.weights.safe_load import load_weights
from common.config.schema import load_config
from common.train.engine import data_seed
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from stage2_contrastive.train import main
from tests.conftest import single_process_run
from tests.support.launch import ROOT, subprocess_env
from tests.support.run_records import assert_resumed_exactly, loss_records, losses, write_tar

CONFIG = "configs/stage2/fmnist_tiny.yaml"


def loss_on_its_batches(run: Path, steps: int) -> tuple[float, float]:
    """Mean contrastive loss (eval mode) of the run's initial model and of its final weights on the `steps`
    batches it trained on (its stream, drawn again as the engine seeds it)."""
    cfg = load_config(Stage2Config, run / "config.yaml")
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    torch.manual_seed(cfg.train.seed)  # as the engine seeds it before building the model
    initial = task.build_model().eval()
    trained = task.build_model().eval()
    trained.load_state_dict(load_weights(run / "model.safetensors"), strict=True)
    stream = task.train_batches(data_seed(cfg.train.seed, 0))
    batches = list(itertools.islice(stream, steps))
    with torch.no_grad():
        return tuple(sum(float(task.training_loss(model, b)[0]) for b in batches) / steps
                     for model in (initial, trained))


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_stage2_trains_evaluates_and_writes_weights(stage2_overrides, tmp_path, loss):
    assert main(["--config", CONFIG, f"loss={loss}", "train.steps=4", *stage2_overrides]) == 0
    run = tmp_path / "run"
    records = read_metrics(run)
    assert len(losses(run)) == 4
    before, after = loss_on_its_batches(run, steps=4)
    assert after < 0.9 * before, (before, after)  # it learned (measured: ×0.56 softmax, ×0.80 sigmoid)
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["zeroshot_top1"] <= 1.0 and evals[-1]["n"] == 128  # the final eval covers the whole split
    assert {"i2t_R@1", "t2i_R@10"} <= set(evals[-1])
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    config = json.loads((run / "open_clip_config.json").read_text())
    assert ("init_logit_bias" in config["model_cfg"]) == (loss == "sigmoid")


BAD_PER_SHARD = 3


def shards_with_bad_samples(fmnist_shards: Path, out: Path, good_per_shard: int, shards: int = 4) -> Path:
    """`shards` shards, each BAD_PER_SHARD bad samples (undecodable image, neither caption nor label, no
    image) then `good_per_shard` good Fashion-MNIST samples. Without a shuffle buffer a stream then
    reads them in that pattern, so with batch size = `good_per_shard` every batch carries exactly
    BAD_PER_SHARD skips, whatever shards the stream draws and wherever it restarts."""
    out.mkdir(parents=True)
    shutil.copy(fmnist_shards / "classnames.txt", out / "classnames.txt")
    with tarfile.open(sorted((fmnist_shards / "train").glob("*.tar"))[0]) as tar:
        good = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # key.cls, key.png pairs
    png = dict(good)[next(name for name, _ in good if name.endswith(".png"))]
    pairs = 2 * good_per_shard
    for i in range(shards):
        bad = [(f"bad{i}-broken.png", b"not a png"), (f"bad{i}-broken.cls", b"3"), (f"bad{i}-nolabel.png", png),
               (f"bad{i}-noimage.cls", b"1")]
        write_tar(out / f"shard-{i}.tar", bad + good[i * pairs:(i + 1) * pairs])
    return out


@pytest.mark.slow
def test_stage2_resume_with_loader_workers_continues_identically_and_keeps_the_skip_count(
        stage2_overrides, fmnist_shards, tmp_path):
    batch = 8
    data = shards_with_bad_samples(fmnist_shards, tmp_path / "bad_shards", good_per_shard=batch)
    args = ["--config", CONFIG, *stage2_overrides, f"data.train_shards={data}", f"train.batch_size={batch}",
            "data.num_workers=2", "data.shuffle_buffer=0", "train.steps=6", "train.save_every=3"]
    assert main(args) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "run", crashed)  # as if killed after step 3's save:
    shutil.rmtree(crashed / "checkpoints" / "step_00000006")
    (crashed / "model.safetensors").unlink()
    assert main([*args, f"train.output_dir={crashed}", "--resume", "auto"]) == 0
    assert_resumed_exactly(crashed, tmp_path / "run", from_step=3)
    for run in (tmp_path / "run", crashed):  # every batch drawn carried BAD_PER_SHARD skips, also after the resume
        assert [r["skipped_samples"] for r in loss_records(run)] == [BAD_PER_SHARD * s for s in range(1, 7)]


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


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(stage2_overrides, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(__import__("tests.support.launch", fromlist=["free_port"]).free_port()),
           "-m", "stage2_contrastive.train", "--config", CONFIG, "train.steps=2", *stage2_overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(ACCELERATE_USE_CPU="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "batch_size: 8" in config
    world = loss_records(tmp_path / "run")[-1]
    assert world["world_size"] == 2


def test_per_tower_weight_decay_and_lr_reach_the_param_groups(stage2_overrides):
    cfg = load_config(Stage2Config, CONFIG, [*stage2_overrides, "optim.weight_decay=0.1", "model.text.weight_decay=0.02",
                                             "model.vision_weight_decay=0.3", "model.text.lr_scale=0.5"])
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    model = task.build_model()
    groups = {id(p): g for g in task.param_groups(model) for p in g["params"]}
    text_w = model.text.transformer.resblocks[0].mlp.c_fc.weight
    vision_w = model.visual.trunk.blocks[0].attn.qkv.weight
    assert (groups[id(text_w)]["weight_decay"], groups[id(text_w)]["lr_scale"]) == (0.02, 0.5)
    assert (groups[id(vision_w)]["weight_decay"], groups[id(vision_w)]["lr_scale"]) == (0.3, 1.0)
    assert groups[id(model.visual.trunk.blocks[0].norm1.weight)]["weight_decay"] == 0.0  # 1-D: never decayed
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)
