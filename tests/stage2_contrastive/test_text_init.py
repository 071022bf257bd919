"""stage2_contrastive/text_init.py: the text tower of an open_clip text config, from an OpenAI-layout file (a state
dict or OpenAI's TorchScript archive) or an open_clip CustomTextCLIP file, gives the source model's own text
embeddings; a file of another width is a one-line error. Tiny open_clip models are built and saved here
(nothing is downloaded)."""
from __future__ import annotations

import json

import pytest
import torch
from open_clip.model import CLIP, CustomTextCLIP
from safetensors.torch import save_file

from common.errors import WeightsMismatchError
from stage2_contrastive.model import build_tokenizer
from tests.support.run_folders import CAPTIONS, TINY_24, stage2_model

TEXT_CFG = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
SOURCE_CFG = {"embed_dim": 24, "quick_gelu": True, "text_cfg": TEXT_CFG,  # OpenAI's towers use QuickGELU
              "vision_cfg": {"image_size": 28, "layers": 1, "width": 64, "patch_size": 14}}


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
    model, cfg = stage2_model([*TINY_24, f"model.text.open_clip_model={folder / 'tiny_clip.json'}",
                               f"model.text.weights={folder / file}"])
    tokens = build_tokenizer(cfg.model)(CAPTIONS)
    assert tokens.shape == (3, TEXT_CFG["context_length"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), sources[file].encode_text(tokens), rtol=0, atol=1e-5)


def test_text_weights_of_another_width_are_a_one_line_error(source_files):
    folder, _ = source_files
    with pytest.raises(WeightsMismatchError, match=r"does not fit the text tower.*model.text.open_clip_model") as info:
        stage2_model([*TINY_24, "model.embed_dim=16", f"model.text.open_clip_model={folder / 'tiny_clip.json'}",
                      f"model.text.weights={folder / 'openai_layout.bin'}"])
    assert "\n" not in str(info.value)
