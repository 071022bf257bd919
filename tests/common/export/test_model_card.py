"""The export's model card and its relocation command: README.md in open_clip's layout with the license, the
run's evaluations and both stages' resolved configs (also as JSON); stage 2 records the stage-1 trunk
`--init` loaded; `--relocate` points the towers at a new place or at a hub repo and back; a registered
sibling is used only when it computes what the trained trunk does (slow: ~3 s)."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
import timm
import torch
import yaml

from common.artifacts import (
    EngineState,
    MetricsFile,
    checkpoint_dir,
    checkpoint_weights_dir,
    read_resolved_config,
    run_folder_of,
    weights_step,
    write_config,
)
from common.weights.formats import ClipConfig, TrunkInfo, write_trunk
from common.export import export_open_clip, towers
from common.export.timm_trunk import clip_trunk_state
from scripts.export_open_clip import main as export_cli
from stage1_mim.config import Stage1Config
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.conftest import single_process_run
from tests.common.export.test_open_clip_folder import trained_like_run


def stage1_run(tmp_path):
    """A stage-1 run folder: config (7 steps), its probe evaluation, its trunk file."""
    run = tmp_path / "stage1"
    write_config(run, Stage1Config(train=dataclasses.replace(Stage1Config().train, steps=7)))
    MetricsFile(run).append({"step": 7, "eval": {"probe_top1": 0.3125}})
    return write_trunk(run, {}, TrunkInfo("eva02_tiny_patch14_224", 28))


def stage2_run(tmp_path, init_from=None):
    """A stage-2 run folder: weights, config, 2 processes logged, evaluations at steps 5 and 10, its newest
    checkpoint at step 10."""
    _, _, run = trained_like_run(tmp_path, "softmax")
    config = ClipConfig.read(run)
    ClipConfig(config.model_cfg, config.preprocess_cfg,
               dataclasses.replace(config.info, init_from=init_from and str(init_from))).write(run)
    write_config(run, Stage2Config(train=dataclasses.replace(Stage2Config().train, steps=10, batch_size=8)))
    metrics = MetricsFile(run)
    figures = dataclasses.replace(single_process_run(micro_batch=8), world_size=2).batch_figures()
    metrics.append({"step": 0, "event": "start", "resumed_from": None, "world_size": 2, "batch": figures})
    metrics.append({"step": 5, "eval": {"zeroshot_top1": 0.5, "i2t_R@1": 0.25}})
    metrics.append({"step": 10, "loss": 1.0})
    metrics.append({"step": 10, "eval": {"zeroshot_top1": 0.75, "i2t_R@1": 0.375}})
    checkpoint_dir(run, 10).mkdir(parents=True)
    EngineState(10).write(checkpoint_dir(run, 10))
    return run


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def test_card_has_license_results_recipe_and_both_configs(tmp_path):
    trunk = stage1_run(tmp_path)
    run = stage2_run(tmp_path, init_from=trunk)
    out = export_open_clip(run, tmp_path / "export", license_id="apache-2.0")
    card = (out / "README.md").read_text()
    header = front_matter(card)
    assert header["license"] == "apache-2.0" and header["library_name"] == "open_clip"
    assert "| 5 | 0.5000 | 0.2500 |" in card and "| 10 | 0.7500 | 0.3750 |" in card  # stage 2, per evaluation
    assert "| 7 | 0.3125 |" in card  # stage 1's probe
    assert ("10 steps × 16 samples per step (contrastive batch 16 = 8 per process × contrastive_accum 1 × 2 "
            "processes; × grad_accum 1)") in card
    assert "7 steps, 64 per process × contrastive_accum 1 × grad_accum 1 (its process count was not logged)" in card
    assert "the exported weights are step 10's" in card
    assert f"`--init` loaded `{trunk}`" in card and 'create_model_and_transforms("local-dir:' in card
    recipe = card.split("## Training recipe")[1]
    stage1_yaml = recipe.split("```yaml\n")[1].split("```")[0]
    assert yaml.safe_load(stage1_yaml) == read_resolved_config(trunk.parent)
    assert json.loads((out / "training_config.json").read_text()) == {
        "stage2": read_resolved_config(run), "stage1": read_resolved_config(trunk.parent), "init_from": str(trunk)}


def test_card_of_a_run_without_stage_1_says_so(tmp_path):
    out = export_open_clip(stage2_run(tmp_path), tmp_path / "export", hub_id="org/name")
    card = (out / "README.md").read_text()
    assert "**Stage 1:** none: the vision trunk was trained from scratch in stage 2" in card
    assert "### Stage 1" not in card and 'create_model_and_transforms("hf-hub:org/name")' in card
    assert json.loads((out / "training_config.json").read_text())["stage1"] is None


def test_stage_2_records_the_trunk_init_loaded_as_an_absolute_path(tmp_path, fmnist_shards):
    trunk = stage1_run(tmp_path)
    cfg = Stage2Config()
    cfg.data.train_shards, cfg.data.eval_shards = str(fmnist_shards / "train"), str(fmnist_shards / "test")
    model, _, _ = trained_like_run(tmp_path, "softmax")
    task = ContrastiveTask(cfg, single_process_run(), init=os.path.relpath(trunk))
    task.save_weights(model.state_dict(), tmp_path)
    assert ClipConfig.read(tmp_path).info.init_from == str(trunk.resolve())


def test_weights_belong_to_their_run_and_step(tmp_path):
    step_3 = checkpoint_dir(tmp_path / "r", 3)
    step_3.mkdir(parents=True)
    EngineState(3).write(step_3)
    in_checkpoint = checkpoint_weights_dir(step_3) / "model.safetensors"
    assert run_folder_of(in_checkpoint) == tmp_path / "r"
    assert weights_step(in_checkpoint) == weights_step(tmp_path / "r" / "model.safetensors") == 3


@pytest.fixture(scope="module")
def export_28(tmp_path_factory):
    """An export at 28 px (no registered timm name: the trunk is named by path)."""
    tmp = tmp_path_factory.mktemp("export_28")
    return export_open_clip(stage2_run(tmp), tmp / "export")


def test_relocate_to_the_hub_and_back(export_28):
    out = export_28
    assert export_cli(["--relocate", str(out), "--hub-id", "org/name"]) == 0
    vision = ClipConfig.read(out).model_cfg["vision_cfg"]
    assert vision["timm_model_name"] == "hf-hub:org/name" and (out / "config.json").is_file()
    assert not (out / towers.TOWERS_DIR).exists()
    assert export_cli(["--relocate", str(out)]) == 0
    vision = ClipConfig.read(out).model_cfg["vision_cfg"]
    assert vision["timm_model_name"] == f"local-dir:{out / towers.TOWERS_DIR}"
    assert (out / towers.TOWERS_DIR / "config.json").is_file() and not (out / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["RUN", "--relocate", "OUT"], "--relocate takes only the export folder"),
    (["RUN"], "give RUN_DIR and OUT_DIR"),
    (["--relocate", "{out}", "--hub-id", "a/b/c"], "Repo id must be in the form"),
    (["--relocate", "{tmp}"], "has no open_clip_config.json"),
    (["{tmp}", "{tmp}/out", "--hub-id", "not a repo"], "Repo id must use"),
])
def test_bad_export_command_is_a_one_line_error(export_28, tmp_path, capsys, args, message):
    assert export_cli([a.format(out=export_28, tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.slow  # 4 forwards at 336 px: ~3 s
def test_a_sibling_with_the_same_tensors_but_another_network_is_not_used(monkeypatch):
    trunk = timm.create_model("eva02_tiny_patch14_224", img_size=336, num_classes=0)
    state = trunk.state_dict()
    assert towers.registered_trunk_name("eva02_tiny_patch14_224", 224, state) == "eva02_tiny_patch14_224"
    assert towers.registered_trunk_name("eva02_tiny_patch14_224", 336, state) == "eva02_tiny_patch14_336"
    # the trained trunk's rotary embedding referenced to another grid: same tensors, other features
    other_rope = lambda name, size: timm.create_model(name, img_size=size, num_classes=0, ref_feat_shape=(20, 20))
    monkeypatch.setattr(towers, "create_eva_trunk", other_rope)
    assert towers.registered_trunk_name("eva02_tiny_patch14_224", 336, state) is None
    assert torch.equal(clip_trunk_state({"visual.trunk.a": torch.ones(1), "text.b": torch.ones(1)})["a"], torch.ones(1))
