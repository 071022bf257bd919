"""A stage-2 run as a folder stock open_clip 3.3 loads offline, and the hub's open_clip loader reads:

    OUT/open_clip_config.json        open_clip's model_cfg + preprocess_cfg (+ evaclip's `ClipInfo`)
    OUT/open_clip_model.safetensors  every weight, fp32, open_clip's key names
    OUT/<tokenizer files>            an HF text tower's tokenizer (where `get_tokenizer` reads it)
    OUT/README.md                    the model card; OUT/training_config.json: the resolved configs
    OUT/if-moved-…/config.json       only when no registered timm name builds the trunk, or for an HF text
                                     tower: their configs (`common.export.towers`; at OUT/config.json for the hub)
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from safetensors.torch import save_file

from common.artifacts import CLIP_WEIGHTS_FILE, OPEN_CLIP_WEIGHTS_FILE, find_weights, run_folder_of, weights_step
from common.export.model_card import CardFacts, write_model_card
from common.export.run_summary import RunSummary
from common.export.timm_trunk import clip_trunk_state
from common.export.towers import check_hub_id, relocate, write_towers
from common.weights.formats import ClipConfig
from common.weights.safe_load import load_weights


def export_open_clip(run_dir: str | Path, out_dir: str | Path, hub_id: Optional[str] = None,
                     license_id: str = "mit") -> Path:
    """Write the folder `open_clip.create_model_and_transforms("local-dir:OUT")` loads (or, with `hub_id`,
    the folder to upload to that hub repo for `"hf-hub:ORG/NAME"`), with its model card under the license
    `license_id` (a hub license id). Returns OUT."""
    check_hub_id(hub_id)
    weights = find_weights(run_dir, CLIP_WEIGHTS_FILE, "stage-2")
    config = ClipConfig.read(weights.parent)
    state = load_weights(weights)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(config.model_cfg)
    model_cfg["vision_cfg"]["patch_dropout"] = 0.0  # inference: no timm patch-drop kwargs
    write_towers(weights.parent, out, model_cfg, config.info, clip_trunk_state(state))
    save_file({k: v.float().contiguous() for k, v in state.items()}, str(out / OPEN_CLIP_WEIGHTS_FILE))
    ClipConfig(model_cfg, config.preprocess_cfg, config.info).write(out)
    relocate(out, hub_id)
    stage1 = RunSummary.read(run_folder_of(config.info.init_from)) if config.info.init_from else None
    facts = CardFacts(ClipConfig.read(out), RunSummary.read(run_folder_of(weights)), weights_step(weights), stage1,
                      license_id, hub_id)
    write_model_card(out, facts)
    return out
