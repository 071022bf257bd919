"""`model.lock_image` / `model.lock_text` (LiT and partial tuning, open_clip's locks): after training steps
the locked tensors are bit-identical to the initial ones, the unlocked ones moved, and only the unlocked
ones are in the optimizer — and in the optimizer state the checkpoint holds. Bad combinations are
one-line config errors."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from common.artifacts import checkpoint_dir
from common.config.schema import load_config
from common.errors import ConfigError
from common.train.engine import train
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from tests.conftest import TINY_STAGE2, single_process_run

UNLOCKED_IMAGE_GROUPS, UNLOCKED_TEXT_LAYERS = 2, 2
LOCKS = ["model.lock_image=true", f"model.lock_image_unlocked_groups={UNLOCKED_IMAGE_GROUPS}",
         "model.lock_text=true", f"model.lock_text_unlocked_layers={UNLOCKED_TEXT_LAYERS}"]


def expected_trainable(name: str) -> bool:
    """The tiny model (12 Eva blocks, 2 text blocks): the trunk's last 2 timm groups (block 11, the final
    norm) and the projection head; the text tower's last 2 groups (last block + ln_final, projection)."""
    return name.startswith(("visual.trunk.blocks.11.", "visual.trunk.fc_norm.", "visual.head.",
                            "text.transformer.resblocks.1.", "text.ln_final.")) or name in (
        "text.text_projection", "logit_scale")


@pytest.fixture(scope="module")
def locked_run(fmnist_shards, tmp_path_factory):
    """(config, initial weights, final weights) of a 2-step locked run."""
    out = tmp_path_factory.mktemp("locked")
    cfg = load_config(Stage2Config, None, [f"data.train_shards={fmnist_shards}/train", "data.eval_shards=",
                                           *TINY_STAGE2, "train.steps=2", f"train.output_dir={out}", *LOCKS])
    torch.manual_seed(cfg.train.seed)  # the engine's seed before build_model: the run's initial weights
    initial = ContrastiveTask(cfg, single_process_run()).build_model().state_dict()
    train(cfg, lambda run: ContrastiveTask(cfg, run))
    return out, initial, load_file(str(out / "model.safetensors"))


@pytest.mark.slow
def test_locked_groups_are_unchanged_and_unlocked_ones_trained(locked_run):
    _, initial, final = locked_run
    assert set(initial) == set(final)
    trained = {k for k in final if not torch.equal(final[k], initial[k].float())}
    assert trained == {k for k in final if expected_trainable(k)}


@pytest.mark.slow
def test_only_unlocked_parameters_are_in_the_optimizer_and_its_checkpointed_state(locked_run):
    out, initial, _ = locked_run
    state = torch.load(checkpoint_dir(out, 2) / "optimizer.bin", weights_only=False)
    in_groups = sum(len(g["params"]) for g in state["param_groups"])
    assert in_groups == len(state["state"]) == sum(expected_trainable(k) for k in initial)


@pytest.mark.parametrize("overrides, message", [
    (["model.lock_image_unlocked_groups=1"], "model.lock_image_unlocked_groups=1 has no effect without model.lock_image"),
    (["model.lock_text=true", "model.text.lock_steps=5"], "both lock the text tower"),
])
def test_lock_misconfigurations_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Stage2Config, None, overrides)
