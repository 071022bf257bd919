"""The `train.deepspeed` file: a DeepSpeed JSON checked at config load time (it exists, parses, and names
a ZeRO stage that exists). The accelerator fills in what the engine owns when it builds the plugin."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import ConfigError

ZERO_STAGES = (0, 1, 2, 3)


def read_deepspeed_json(path: str) -> dict[str, Any]:
    """A DeepSpeed JSON (`train.deepspeed`), checked: it exists, parses, and its ZeRO stage exists."""
    if not Path(path).is_file():
        raise ConfigError(f"DeepSpeed config '{path}' not found — set train.deepspeed to one of "
                          "configs/deepspeed/zero{1,2,3}.json")
    try:
        ds = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"DeepSpeed config '{path}' is not valid JSON ({err}) — fix the file") from err
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in ZERO_STAGES:
        raise ConfigError(f"ZeRO stage {stage!r} in '{path}' does not exist — use 0, 1, 2 or 3")
    return ds
