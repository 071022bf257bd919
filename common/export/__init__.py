"""Export a run into the tools users already have (docs/ARCHITECTURE.md, "Export").

    open_clip_folder  run → a folder stock open_clip loads (`local-dir:OUT`, or `hf-hub:ORG/NAME` once published)
    towers            how that folder's `open_clip_config.json` names its towers; `relocate` after a move
    model_card        the folder's README.md (open_clip's model-card layout) and the resolved configs as JSON
    run_summary       what a run folder says about itself (config, evaluations, batch figures), for the card
    timm_trunk        run → a timm checkpoint of the vision trunk

All read the consolidated weights the engine writes with every checkpoint (accelerate's `get_state_dict`,
which gathers ZeRO-3 shards through DeepSpeed itself), so a ZeRO run and a plain run export the same way.
Run-folder files come from `common.artifacts`, weights files' formats from `common.weights.formats`.
"""
from common.export.open_clip_folder import export_open_clip
from common.export.timm_trunk import export_timm
from common.export.towers import relocate

__all__ = ["export_open_clip", "export_timm", "relocate"]
