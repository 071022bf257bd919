"""common/export/towers.py, how an export names its towers, so that it travels: exported, copied elsewhere, the
original renamed away, then loaded by stock open_clip in a process where evaclip cannot be imported
(`tests/support/stock_open_clip_load.py`, another working directory, no PYTHONPATH), it gives the run's own
embeddings (max abs diff < 1e-5): at a registered image size and at a registered sibling's size as copied; at
a size timm registers no name for, and with a Hugging Face text tower, after the one command
`scripts/export_open_clip.py --relocate COPY` (before it: a one-line error naming that command); and from a
hub cache snapshot of a `--hub-id` export, offline. One subprocess loads every case (slow). A registered
sibling is used only when it computes what the trained trunk does."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from common.export import export_open_clip, towers
from common.export.timm_trunk import clip_trunk_state
from common.export.towers import path_named_towers
from common.weights.formats import ClipConfig
from scripts.export_open_clip import main as export_cli
from stage2_contrastive.config import ModelConfig, TextConfig
from stage2_contrastive.model import build_tokenizer
from tests.support.hf_text import TEXTS
from tests.support.launch import ROOT
from tests.support.run_folders import tiny_cfg, trained_like_run

HUB_ID = "evaclip-test/tiny-hf-28"
RELOCATED = ("native_28", "hf_28")           # timm registers no name at 28 px / an HF text tower
AS_COPIED = ("native_224", "native_336")     # registered size / registered sibling (eva02_tiny_patch14_336)
CASES = (*RELOCATED, *AS_COPIED, "hub_hf_28")
MOVED = ("moved_native_28", "moved_hf_224")  # copied, original renamed, not relocated


def hf_cfg(folder: Path) -> ModelConfig:
    return ModelConfig(embed_dim=32, text=TextConfig(context_length=16, hf_model=str(folder)))


def as_hub_snapshot(folder: Path, cache: Path, repo_id: str) -> None:
    """`folder` laid out as huggingface_hub's cache holds a downloaded repo (snapshots/REV/… + refs/main)."""
    repo, revision = cache / f"models--{repo_id.replace('/', '--')}", "0" * 40
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def export_and_move(tmp: Path, name: str, cfg: ModelConfig, size: int, hub_id: str | None = None):
    """Export a run, copy the export to `moved/NAME`, rename the original away: (model, cfg, copy)."""
    model, cfg, run = trained_like_run(tmp / "runs", "softmax", cfg, size, name)
    export_open_clip(run, tmp / "exports" / name, hub_id)
    copy = tmp / "moved" / name
    shutil.copytree(tmp / "exports" / name, copy)
    (tmp / "exports" / name).rename(tmp / "exports" / f"{name}.gone")
    return model, cfg, copy


@pytest.fixture(scope="module")
def travelled(tmp_path_factory, tiny_bert):
    """Every case exported, moved and (where needed) relocated; one stock-open_clip subprocess loads them."""
    tmp = tmp_path_factory.mktemp("travel")
    (tmp / "runs").mkdir()
    plan = {"native_28": (tiny_cfg(), 28), "hf_28": (hf_cfg(tiny_bert), 28), "native_224": (tiny_cfg(), 224),
            "native_336": (tiny_cfg(), 336), "moved_native_28": (tiny_cfg(), 28),
            "moved_hf_224": (hf_cfg(tiny_bert), 224)}
    made = {name: export_and_move(tmp, name, cfg, size) for name, (cfg, size) in plan.items()}
    made["hub_hf_28"] = export_and_move(tmp, "hub_hf_28", hf_cfg(tiny_bert), 28, HUB_ID)
    as_hub_snapshot(made["hub_hf_28"][2], tmp / "hf_home" / "hub", HUB_ID)
    for name in RELOCATED:
        assert export_cli(["--relocate", str(made[name][2])]) == 0  # the one command
    sizes = {28, 224, 336}
    images = {f"images_{s}": torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(s)) for s in sizes}
    job = tmp / "job"
    job.mkdir()
    save_file(images, str(job / "inputs.safetensors"))
    cases = [{"name": n, "model": f"hf-hub:{HUB_ID}" if n == "hub_hf_28" else f"local-dir:{made[n][2]}",
              "image_size": plan.get(n, (None, 28))[1]} for n in (*CASES, *MOVED)]
    (job / "job.json").write_text(json.dumps({"texts": TEXTS, "cases": cases}))
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp / "hf_home"), HF_HUB_CACHE=str(tmp / "hf_home" / "hub"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    loader = ROOT / "tests" / "support" / "stock_open_clip_load.py"
    cmd = [sys.executable, "-S", str(loader), sysconfig.get_paths()["purelib"], str(job)]
    proc = subprocess.run(cmd, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((job / "report.json").read_text())
    return made, images, load_file(str(job / "embeddings.safetensors")), report


@pytest.mark.slow
def test_the_loader_could_not_import_evaclip(travelled):
    _, _, _, report = travelled
    assert report["evaclip_importable"] == [] and report["evaclip_imported"] == []


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_moved_export_gives_the_runs_own_embeddings(travelled, name):
    made, images, theirs, report = travelled
    assert name not in report["errors"], report["errors"].get(name)
    ours, cfg, copy = made[name]
    size = ours.visual.image_size[0]
    tokens = build_tokenizer(cfg)(TEXTS)
    assert torch.equal(theirs[f"{name}.tokens"], tokens)
    with torch.no_grad():
        image, text = ours.encode_image(images[f"images_{size}"]), ours.encode_text(tokens)
    assert (theirs[f"{name}.image"] - image).abs().max() < 1e-5
    assert (theirs[f"{name}.text"] - text).abs().max() < 1e-5
    named = path_named_towers(ClipConfig.read(copy).model_cfg)
    assert named == ([] if name in AS_COPIED else ["vision", "text"] if name.endswith("hf_28") else ["vision"])


@pytest.mark.slow
def test_registered_sizes_name_the_trunk_by_its_registered_name(travelled):
    made = travelled[0]
    names = {n: ClipConfig.read(made[n][2]).model_cfg["vision_cfg"]["timm_model_name"] for n in AS_COPIED}
    assert names == {"native_224": "eva02_tiny_patch14_224", "native_336": "eva02_tiny_patch14_336"}


@pytest.mark.slow
def test_hub_export_names_its_own_repo_and_nothing_on_this_disk(travelled):
    copy = travelled[0]["hub_hf_28"][2]
    config = (copy / "open_clip_config.json").read_text()
    assert f'"hf-hub:{HUB_ID}"' in config and str(copy.parent.parent) not in config
    assert (copy / "config.json").is_file() and (copy / "open_clip_model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("name", MOVED)
def test_moved_export_not_relocated_fails_in_one_line_naming_the_command(travelled, name):
    error = travelled[3]["errors"][name]
    assert "export_open_clip.py--relocate" in error and "\n" not in error, error


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
