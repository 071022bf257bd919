"""common/export/model_card.py: the export's model card — README.md in open_clip's layout with the license, the
run's evaluations, the batch figures each stage recorded, and both stages' resolved configs (also as JSON);
a run without stage 1 says so."""
from __future__ import annotations

import json

import yaml

from common.artifacts import read_resolved_config
from common.export import export_open_clip
from tests.support.run_folders import stage1_run, stage2_run


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
