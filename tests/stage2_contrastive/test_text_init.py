"""Starting from existing CLIP weights (stage2_contrastive/text_init.py, starting_point.py), with tiny open_clip
models built here and saved as checkpoints (nothing is downloaded):
- the text tower of an open_clip text config, from an OpenAI-layout file (a state dict or OpenAI's TorchScript
  archive) or an open_clip CustomTextCLIP file, gives the source model's own text embeddings;
- `--init` from a stage-2 run or an exported open_clip folder round-trips the whole model; continuing at
  another image size resamples the position embedding, a loss switch adds the bias; every key is reported
  once; a checkpoint of another shape is a one-line error."""
from __future__ import annotations

import json

import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from common.weights.formats import ClipConfig, ClipInfo, write_clip
from common.config.schema import load_config
from common.errors import ConfigError, WeightsMismatchError
from common.export import export_open_clip
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.model import build_clip, build_tokenizer, open_clip_model_cfg
from stage2_contrastive.objective import Objective
from stage2_contrastive.starting_point import init_model, resolve_init

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
SOURCE_CFG = {"embed_dim": 24, "quick_gelu": True, "text_cfg": TEXT_CFG,  # OpenAI's towers use QuickGELU
              "vision_cfg": {"image_size": 28, "layers": 1, "width": 64, "patch_size": 14}}
TINY = ["model.embed_dim=24", "data.image_size=28", "model.text.context_length=16", "model.text.width=32",
        "model.text.heads=2", "model.text.layers=2"]
CAPTIONS = ["a photo of a shirt.", "a bag", "an ankle boot on a white background"]


def stage2_model(overrides: list[str], loss: str = "softmax"):
    cfg = load_config(Stage2Config, None, [f"loss={loss}", *overrides])
    return build_clip(cfg.model, Objective.from_config(loss, cfg.model, 8), cfg.data.image_size).eval(), cfg


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    """A tiny open_clip model config JSON and seeded models saved as OpenAI and open_clip files (OpenAI's
    TorchScript archive: written by the test that reads it)."""
    folder = tmp_path_factory.mktemp("open_clip_source")
    (folder / "tiny_clip.json").write_text(json.dumps(SOURCE_CFG))
    torch.manual_seed(3)
    openai_layout = CLIP(**SOURCE_CFG).eval()  # text tensors at the top level, as OpenAI's state dicts
    torch.save(openai_layout.state_dict(), folder / "openai_layout.bin")
    torch.manual_seed(4)
    custom = CustomTextCLIP(**SOURCE_CFG).eval()  # text tensors under text.*, as open_clip's EVA02 files
    save_file({k: v.contiguous() for k, v in custom.state_dict().items()}, str(folder / "custom_text.safetensors"))
    return folder, {"openai_layout.bin": openai_layout, "openai_torchscript.pt": openai_layout,
                    "custom_text.safetensors": custom}


@pytest.mark.parametrize("file", ["openai_layout.bin", pytest.param("openai_torchscript.pt", marks=pytest.mark.slow),
                                  "custom_text.safetensors"])
def test_text_tower_from_a_clip_checkpoint_gives_its_own_text_embeddings(source_files, file):
    folder, sources = source_files
    if file == "openai_torchscript.pt":  # what OpenAI distributes: ViT-B-16.pt is such an archive
        torch.jit.save(torch.jit.script(sources[file]), folder / file)
    model, cfg = stage2_model([*TINY, f"model.text.open_clip_model={folder / 'tiny_clip.json'}",
                               f"model.text.weights={folder / file}"])
    tokens = build_tokenizer(cfg.model)(CAPTIONS)
    assert tokens.shape == (3, TEXT_CFG["context_length"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), sources[file].encode_text(tokens), rtol=0, atol=1e-5)


def test_text_weights_of_another_width_are_a_one_line_error(source_files):
    folder, _ = source_files
    with pytest.raises(WeightsMismatchError, match=r"does not fit the text tower.*model.text.open_clip_model") as info:
        stage2_model([*TINY, "model.embed_dim=16", f"model.text.open_clip_model={folder / 'tiny_clip.json'}",
                      f"model.text.weights={folder / 'openai_layout.bin'}"])
    assert "\n" not in str(info.value)


def write_stage2_run(folder, model, cfg, loss: str = "softmax") -> None:
    """What a stage-2 run leaves at its top level: model.safetensors + open_clip_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    objective = Objective.from_config(loss, cfg.model, 8)
    info = ClipInfo(stage=2, loss=loss, vision_model=cfg.model.vision_model, image_size=cfg.data.image_size)
    write_clip(folder, model.state_dict(), ClipConfig(open_clip_model_cfg(cfg.model, objective, cfg.data.image_size),
                                                      {}, info))


@pytest.fixture(scope="module")
def stage2_run(tmp_path_factory):
    """A trained-looking stage-2 run at 28 px with patch dropout (seeded weights, no training needed)."""
    torch.manual_seed(5)
    model, cfg = stage2_model([*TINY, "model.patch_dropout=0.5"])
    run = tmp_path_factory.mktemp("stage2_run")
    write_stage2_run(run, model, cfg)
    return run, model


def embeddings(model, cfg) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, cfg.data.image_size, cfg.data.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.encode_image(images), model.encode_text(build_tokenizer(cfg.model)(CAPTIONS))


def assert_every_key_listed_once(report: dict[str, list[str]], keys: set[str]) -> None:
    listed = [k for kind in ("loaded", "resampled", "skipped", "new") for k in report[kind]]
    assert sorted(listed) == sorted(keys)


@pytest.mark.parametrize("form", ["stage-2 run", "exported open_clip folder"])
def test_init_from_a_whole_model_round_trips(stage2_run, tmp_path, form):
    run, source = stage2_run
    path = run if form == "stage-2 run" else export_open_clip(run, tmp_path / "export")
    model, cfg = stage2_model(TINY)  # patch dropout off: FLIP's unmasked tuning
    report = init_model(model, resolve_init(path))
    assert_every_key_listed_once(report, set(source.state_dict()))
    assert len(report["loaded"]) == len(source.state_dict())
    for ours, theirs in zip(embeddings(model, cfg), embeddings(source.eval(), cfg)):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_continuation_at_a_larger_size_resamples_pos_embeds_and_a_loss_switch_adds_the_bias(stage2_run):
    """EVA-CLIP's 224 → 336 px continuation in miniature (28 → 56 px), with a longer context and sigmoid."""
    run, source = stage2_run
    model, _ = stage2_model([*TINY, "data.image_size=56", "model.text.context_length=20"], loss="sigmoid")
    report = init_model(model, resolve_init(run))
    assert report["resampled"] == ["visual.trunk.pos_embed", "text.positional_embedding"]
    assert report["new"] == ["logit_bias"]
    assert_every_key_listed_once(report, set(source.state_dict()) | set(model.state_dict()))
    expected = resample_abs_pos_embed(source.visual.trunk.pos_embed.detach(), [4, 4], [2, 2], num_prefix_tokens=1)
    torch.testing.assert_close(model.visual.trunk.pos_embed.detach(), expected)
    own, theirs = model.state_dict(), source.state_dict()
    assert all(torch.equal(own[k], theirs[k]) for k in report["loaded"])


def test_init_from_a_model_of_another_width_is_a_one_line_error(stage2_run):
    run, _ = stage2_run
    model, _ = stage2_model([*TINY, "model.embed_dim=16"])
    with pytest.raises(WeightsMismatchError, match=r"--init .*does not fit the model") as info:
        init_model(model, resolve_init(run))
    assert "\n" not in str(info.value)
