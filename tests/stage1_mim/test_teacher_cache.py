"""The reference-teacher cache (stage1_mim/teacher_cache.py): an entry is reused only when its key (the
teacher's config and data) matches; a half-written entry is never reused; a damaged or mismatched one is a
one-line error; a folder that is not an open_clip export is a one-line error. The maker here writes a
stand-in export (the cache never reads what is inside, only its files' hashes)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stage1_mim.teacher_cache import (KEY_FILE, CacheKeyError, NotAnExportError, TeacherKey, data_fingerprint,
                                      entry_dir, get_or_make, require_open_clip_export, weight_config)

KEY_A = TeacherKey({"train": {"steps": 300, "seed": 0}, "optim": {"lr": 1e-3}}, "data-sha-a")


class Maker:
    """A `make` that writes `export/` with the key it was made for, counting its calls."""

    def __init__(self, key: TeacherKey, fail: bool = False):
        self.key, self.fail, self.calls = key, fail, 0

    def __call__(self, tmp: Path) -> dict:
        self.calls += 1
        (tmp / "export").mkdir(parents=True)
        (tmp / "export" / "open_clip_model.safetensors").write_text(json.dumps(self.key.as_dict()))
        if self.fail:
            raise RuntimeError("training stopped")
        return {"wall_s": 1.0, "cpu_s": 2.0}


def made_for(entry: Path) -> dict:
    return json.loads((entry / "export" / "open_clip_model.safetensors").read_text())


def test_cached_teacher_is_reused_only_when_its_key_matches(tmp_path):
    """Mutation checked: `entry_dir` returning `cache / "teacher"` (the key ignored) reuses A's teacher
    for B — this test fails."""
    first = Maker(KEY_A)
    entry_a, record, made = get_or_make(tmp_path, KEY_A, first)
    assert made and first.calls == 1 and record["made"] == {"wall_s": 1.0, "cpu_s": 2.0}
    again = Maker(KEY_A)
    assert get_or_make(tmp_path, KEY_A, again)[1:] == (record, False) and again.calls == 0
    for key_b in (TeacherKey(dict(KEY_A.config, optim={"lr": 5e-4}), KEY_A.data),   # another config
                  TeacherKey(KEY_A.config, "data-sha-b")):                          # other data
        maker_b = Maker(key_b)
        entry_b, _, made_b = get_or_make(tmp_path, key_b, maker_b)
        assert made_b and maker_b.calls == 1 and entry_b != entry_a
        assert made_for(entry_b) == key_b.as_dict() and made_for(entry_a) == KEY_A.as_dict()


def test_an_entry_holding_another_key_is_a_one_line_error(tmp_path):
    """Mutation checked: `check_entry` without its key comparison reuses the entry — this test fails."""
    entry_a, _, _ = get_or_make(tmp_path, KEY_A, Maker(KEY_A))
    key_b = TeacherKey(KEY_A.config, "data-sha-b")
    shutil.copytree(entry_a, entry_dir(tmp_path, key_b))  # e.g. a copied or renamed folder
    with pytest.raises(CacheKeyError, match="made for another data than this run's") as err:
        get_or_make(tmp_path, key_b, Maker(key_b))
    assert "\n" not in str(err.value) and f"delete {entry_dir(tmp_path, key_b)}" in str(err.value)


def test_a_half_written_entry_is_never_reused(tmp_path):
    """Mutation checked: renaming before `make` returns (or reusing a folder without its key file) hands
    the next call a teacher that never finished — this test fails."""
    with pytest.raises(RuntimeError, match="training stopped"):
        get_or_make(tmp_path, KEY_A, Maker(KEY_A, fail=True))
    assert not entry_dir(tmp_path, KEY_A).exists() and not list(tmp_path.glob("*.tmp-*"))
    entry = entry_dir(tmp_path, KEY_A)       # stopped between the rename and the key file
    (entry / "export").mkdir(parents=True)
    retry = Maker(KEY_A)
    _, _, made = get_or_make(tmp_path, KEY_A, retry)
    assert made and retry.calls == 1 and (entry / KEY_FILE).is_file()


def test_a_damaged_entry_is_a_one_line_error(tmp_path):
    entry, _, _ = get_or_make(tmp_path, KEY_A, Maker(KEY_A))
    (entry / "export" / "open_clip_model.safetensors").write_text("truncated")
    with pytest.raises(CacheKeyError, match="is damaged .export/open_clip_model.safetensors changed") as err:
        get_or_make(tmp_path, KEY_A, Maker(KEY_A))
    assert "\n" not in str(err.value)


def test_finish_runs_after_the_rename_and_before_the_key_file(tmp_path):
    seen = []
    get_or_make(tmp_path, KEY_A, Maker(KEY_A), finish=lambda e: seen.append((e.name, (e / KEY_FILE).exists())))
    assert seen == [(entry_dir(tmp_path, KEY_A).name, False)]


def test_key_ignores_what_does_not_change_the_weights(fmnist_shards):
    config = {"train": {"steps": 300, "output_dir": "runs/a", "eval_every": 20}, "data": {
        "train_shards": "x", "eval_max_samples": 500, "image_size": 56}, "eval": {"zeroshot": []}}
    moved = json.loads(json.dumps(config))
    moved["train"].update(output_dir="elsewhere", eval_every=0, wandb={"mode": "offline"}, telemetry=False,
                          data_wait_warn=0.5, peak_tflops=989.0)
    moved["data"].update(train_shards="y", eval_max_samples=0)
    assert weight_config(config) == weight_config(moved) == {"train": {"steps": 300}, "data": {"image_size": 56}}
    train = str(fmnist_shards / "train")
    assert data_fingerprint(train) == data_fingerprint(train) != data_fingerprint(str(fmnist_shards / "test"))


def test_a_folder_that_is_not_an_open_clip_export_is_a_one_line_error(tmp_path):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(NotAnExportError, match="is not an open_clip export .* scripts/export_open_clip.py") as err:
            require_open_clip_export(folder)
        assert "\n" not in str(err.value)
    (tmp_path / "open_clip_config.json").write_text("{}")
    (tmp_path / "open_clip_model.safetensors").write_text("")
    assert require_open_clip_export(tmp_path) == tmp_path
