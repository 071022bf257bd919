"""scripts/export_open_clip.py, the command: `--relocate` points the towers of an export at a hub repo and
back at the folder itself; a command it cannot run is one line on stderr and exit status 2."""
from __future__ import annotations

import pytest

from common.export import export_open_clip, towers
from common.weights.formats import ClipConfig
from scripts.export_open_clip import main as export_cli
from tests.support.run_folders import stage2_run


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
