"""common/config/schema.py, config loading: typed sections, `base:` files, overrides, lists of sections, the
project's configs, a saved config that reads back as it was (through the run folder's config.yaml), and
one-line errors that name the key and the fix."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from common.artifacts import CONFIG_FILE, read_config, write_config
from common.config.schema import load_config
from common.errors import ConfigError


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    name: Literal["adamw", "lamb"] = "adamw"


@dataclass
class Outer:
    steps: int = field(default=10, metadata={"min": 1})
    label: str = "x"
    maybe: Optional[int] = None
    train: Inner = field(default_factory=Inner)


def write(tmp_path, text: str, name: str = "c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_overrides_are_typed(tmp_path):
    path = write(tmp_path, "steps: 5\ntrain:\n  lr: 1\n  betas: [0.8, 0.9]\n")
    cfg = load_config(Outer, path, ["train.name=lamb", "maybe=3"])
    assert cfg.steps == 5 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.train.betas == (0.8, 0.9) and cfg.train.name == "lamb" and cfg.maybe == 3


def test_base_file_is_merged(tmp_path):
    write(tmp_path, "steps: 5\ntrain:\n  lr: 0.5\n", "base.yaml")
    child = write(tmp_path, "base: base.yaml\ntrain:\n  name: lamb\n", "child.yaml")
    cfg = load_config(Outer, child)
    assert (cfg.steps, cfg.train.lr, cfg.train.name) == (5, 0.5, "lamb")


@pytest.mark.parametrize("text, overrides, expected", [
    ("trian:\n  lr: 1\n", [], "unknown key 'trian' in {file} — did you mean 'train'?"),
    ("train:\n  lrr: 1\n", [], "unknown key 'train.lrr' in {file} — did you mean 'train.lr'?"),
    ("steps: ten\n", [], "bad value 'ten' for 'steps' in {file}: expected int"),
    ("steps: 0\n", [], "bad value 0 for 'steps' in {file}: must be ≥ 1"),
    ("", ["train.name=sgd"], "bad value 'sgd' for 'train.name' in command-line override 'train.name=sgd' — use one of: 'adamw', 'lamb'"),
    ("", ["train.betas=[1]"], "bad value [1] for 'train.betas'"),
    ("", ["stepz=3"], "did you mean 'steps'?"),
    ("", ["steps"], "bad override 'steps': write it as dotted.key=value"),
])
def test_config_errors_name_the_key_and_the_fix(tmp_path, text, overrides, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, overrides)
    message = str(info.value)
    assert "\n" not in message
    assert expected.format(file=path) in message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found — pass an existing YAML"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, ["train.betas=[0.5, 0.6]", "label=hello"])
    write_config(tmp_path, cfg)
    assert yaml.safe_load((tmp_path / CONFIG_FILE).read_text())["train"]["betas"] == [0.5, 0.6]
    assert read_config(tmp_path, Outer) == cfg


def test_project_configs_load():
    from stage2_contrastive.config import Stage2Config
    cfg = load_config(Stage2Config, "configs/stage2/fmnist_tiny_sigmoid.yaml")
    assert cfg.loss == "sigmoid" and cfg.model.vision_model == "eva02_tiny_patch14_224"
    with pytest.raises(ConfigError, match="use one of: 'softmax', 'sigmoid'"):
        load_config(Stage2Config, "configs/stage2/fmnist_tiny.yaml", ["loss=hinge"])


def test_override_of_a_section_beside_a_nested_section_without_a_file():
    from stage2_contrastive.config import Stage2Config
    cfg = load_config(Stage2Config, None, ["data.image_size=28", "data.augment.hflip=true"])
    assert cfg.data.image_size == 28 and cfg.data.augment.hflip is True


# ---- lists of sections: `eval.zeroshot`, `data.train_shards` ---------------------------------------
ZEROSHOT_SETS = """\
eval:
  zeroshot:
    - {name: imagenet, shards: /data/in1k/test, classnames: /data/in1k/names.txt, templates: openai_imagenet}
    - {name: fm, shards: /data/fm/test}
data:
  train_shards:
    - {shards: /data/laion, weight: 3}
    - {shards: /data/cc12m, weight: 1, name: cc}
"""


def test_a_list_of_sections_loads_typed_with_defaults_and_round_trips(tmp_path):
    from common.config.sections import ShardSource, ZeroShotSetConfig
    from stage2_contrastive.config import Stage2Config
    cfg = load_config(Stage2Config, write(tmp_path, ZEROSHOT_SETS))
    first, second = cfg.eval.zeroshot
    assert isinstance(first, ZeroShotSetConfig) and (first.name, first.templates) == ("imagenet", "openai_imagenet")
    assert (second.name, second.classnames, second.templates) == ("fm", "", "")  # defaults fill the item
    assert cfg.data.train_shards == [ShardSource("/data/laion", 3.0), ShardSource("/data/cc12m", 1.0, "cc")]
    assert [(s.name, s.weight) for s in cfg.data.train_sources()] == [("0", 3.0), ("cc", 1.0)]
    write_config(tmp_path / "run", cfg)
    assert read_config(tmp_path / "run", Stage2Config) == cfg
    plain = load_config(Stage2Config, None, ["data.train_shards=/data/one"])  # a plain spec is still one source
    assert plain.data.train_sources() == [ShardSource("/data/one", 1.0, "0")]


@pytest.mark.parametrize("override, expected", [
    ("eval.zeroshot=[{name: a, shards: s, nmae: b}]", "unknown key 'eval.zeroshot[0].nmae' in command-line "
     "override 'eval.zeroshot=[{name: a, shards: s, nmae: b}]' — did you mean 'eval.zeroshot[0].name'?"),
    ("eval.zeroshot=[{name: a}]", "missing key 'eval.zeroshot[0].shards'"),
    ("eval.zeroshot=[imagenet]", "bad value 'imagenet' for 'eval.zeroshot[0]'"),
    ("eval.zeroshot=[{name: a, shards: s}, {name: a, shards: t}]", "eval.zeroshot[1].name='a' is used twice"),
    ("eval.zeroshot=[{name: a, shards: s, templates: imagenet80}]",
     "eval.zeroshot[0].templates='imagenet80' is neither a template set nor a file"),
    ("data.train_shards=[{shards: a, weight: 1}, {shards: b, weight: 0}]",
     "data.train_shards[1].weight=0.0 must be > 0 — give every source a positive weight"),
    ("data.train_shards=[{shards: a, wieght: 2}]", "did you mean 'data.train_shards[0].weight'?"),
    ("data.train_shards=[{shards: a, name: x}, {shards: b, name: x}]", "source names ['x', 'x'] repeat"),
])
def test_list_items_are_checked_like_sections_with_one_line_errors(override, expected):
    from stage2_contrastive.config import Stage2Config
    with pytest.raises(ConfigError) as info:
        load_config(Stage2Config, None, [override])
    assert "\n" not in str(info.value) and expected in str(info.value), str(info.value)
