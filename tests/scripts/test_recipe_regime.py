"""The regime the recipe is for (scripts/recipe.py, common/datasets/subsets.py): stage 1 on an image pool that
holds no caption, stage 2 and every scratch control on the same seeded N caption pairs, a reference teacher
from the cache, one-line errors for a caption count above the set and for a teacher that is no export."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from common.datasets.sources import read_samples
from common.datasets.subsets import CaptionCountError, subset_indices, write_caption_set, write_image_pool
from scripts.demo_report import gap
from scripts.recipe import Recipe, Sizes, caption_shards, plan
from tests.support.launch import ROOT, subprocess_env

SIZES = Sizes(teacher_steps=7, reference_steps=11, stage1_steps=5, stage2_steps=3, control_seeds=2, total_seeds=1,
              sigmoid_seeds=1)


def runs(recipe: Recipe) -> dict[str, list[str]]:
    return {step.name: list(step.args) for step in plan(recipe)}


def value(args: list[str], key: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"{key}="))


def stage2_runs(made: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: args for name, args in made.items() if "stage2_contrastive.train" in args}


def test_caption_set_is_seed_stable_and_a_subset_of_the_source(fmnist_shards, tmp_path):
    """Mutation checked: `subset_indices` drawing from an unseeded `default_rng()` — this test fails."""
    source = str(fmnist_shards / "train")
    for name, seed in (("a", 0), ("b", 0), ("other", 1)):
        write_caption_set(source, tmp_path / name, 100, seed)
    a, b, other = (read_samples(str(tmp_path / name / "train")) for name in ("a", "b", "other"))
    assert a == b and len(a) == 100 and a != other
    everything = read_samples(source)
    assert a == [everything[i] for i in subset_indices(len(everything), 100, 0)]
    assert all("cls" in s for s in a)  # pairs as they are: the label that makes the caption stays
    assert (tmp_path / "a" / "classnames.txt").read_text() == (fmnist_shards / "classnames.txt").read_text()
    assert list(subset_indices(512, 5, 3)) == list(subset_indices(512, 5, 3))


def test_every_arm_trains_on_the_same_caption_set(tmp_path):
    """Mutation checked: `student_runs` giving the scratch controls `r.data / "train"` — this test fails."""
    for teacher, counts in (("reference", (200, None)), ("bootstrap", (200,))):
        r = Recipe("fashion-mnist", tmp_path / teacher, tmp_path / "data", SIZES, (0, 1), teacher, captions=counts)
        made = stage2_runs(runs(r))
        for n in counts:
            label = "all" if n is None else str(n)
            arms = {k: v for k, v in made.items() if len(counts) == 1 or k.startswith(f"captions_{label}/")}
            groups = {k.split("/")[-1].rsplit("_seed", 1)[0] for k in arms if k != "teacher"}
            assert groups == {"init", "scratch", "init_sigmoid", "scratch_equal_student", "scratch_equal_total"}
            assert {value(v, "data.train_shards") for v in arms.values()} == {str(caption_shards(r, n))}
    assert caption_shards(r, 200) == tmp_path / "data" / "captions_200_seed0" / "train"
    assert caption_shards(r, None) == tmp_path / "data" / "train"


def test_stage1_trains_on_an_image_pool_without_captions(fmnist_shards, tmp_path):
    """Mutation checked: `write_image_pool` keeping the captions and labels (keep_text=True) — this test fails."""
    record = write_image_pool(str(fmnist_shards / "train"), tmp_path / "pool")
    pool = read_samples(str(tmp_path / "pool" / "train"))
    assert record["written"] == len(pool) == 512 and all(set(s) == {"png"} for s in pool)
    assert not (tmp_path / "pool" / "classnames.txt").exists()
    r = Recipe("fashion-mnist", tmp_path / "out", tmp_path / "data", SIZES, teacher="reference", captions=(200,))
    made = runs(r)
    assert value(made["stage1"], "data.train_shards") == str(tmp_path / "data" / "pool" / "train")
    assert made["pool"][-2:] == [str(tmp_path / "data" / "train"), str(tmp_path / "data" / "pool")]


def test_stage1_is_fed_no_caption(fmnist_shards, tmp_path):
    """What the stage-1 task's sample function receives from the pool: images, no `txt`, no `cls`.
    Mutation checked: as above (the pool keeping captions) — this test fails."""
    from common.config.schema import load_config
    from stage1_mim.config import Stage1Config
    from stage1_mim.task import MimTask
    from tests.support.teachers import save_native_vit_folder
    from tests.support.tiny import single_process_run
    write_image_pool(str(fmnist_shards / "train"), tmp_path / "pool")
    save_native_vit_folder(tmp_path / "teacher")
    cfg = load_config(Stage1Config, "configs/stage1/fmnist_tiny.yaml", [
        f"teacher.model=local-dir:{tmp_path / 'teacher'}", f"data.train_shards={tmp_path / 'pool' / 'train'}",
        f"data.eval_shards={fmnist_shards / 'test'}", "data.num_workers=0", "train.batch_size=8"])
    task = MimTask(cfg, single_process_run(8))
    seen, sample = [], task.train_sample
    task.train_sample = lambda image, meta: seen.append(meta) or sample(image, meta)
    batch = next(iter(task.train_batches(seed=0)))
    assert batch["image"].shape == (8, 3, 56, 56) and len(seen) >= 8
    assert all(m["txt"] is None and m["captions"] == [] and m["cls"] is None for m in seen)


def test_captions_above_the_set_size_is_a_one_line_error(fmnist_shards, tmp_path):
    with pytest.raises(CaptionCountError, match="--captions 513 asks for more pairs than the 512") as err:
        write_caption_set(str(fmnist_shards / "train"), tmp_path / "c", 513)
    assert "\n" not in str(err.value) and "use --captions 512 (all) or fewer" in str(err.value)
    proc = subprocess.run([sys.executable, "-m", "common.datasets.subsets", "captions", str(fmnist_shards / "train"),
                           str(tmp_path / "c"), "--n", "600"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "600" in proc.stderr


def test_reference_teacher_is_made_on_every_pair_and_counted_in_total_compute(tmp_path):
    r = Recipe("fashion-mnist", tmp_path / "out", tmp_path / "data", SIZES, (0, 1), "reference", captions=(200,),
               teacher_cache=tmp_path / "cache")
    made = runs(r)
    teacher = made["teacher"]
    assert teacher[0] == "scripts/reference_teacher.py" and "--steps" in teacher
    assert teacher[teacher.index("--shards") + 1] == str(tmp_path / "data" / "train")
    assert teacher[teacher.index("--cache") + 1] == str(tmp_path / "cache")
    assert value(made["stage1"], "teacher.model") == f"local-dir:{tmp_path / 'out' / 'teacher_export'}"
    assert value(made["captions_200/scratch_equal_student_seed1"], "train.steps") == "8"
    assert value(made["captions_200/scratch_equal_total_seed0"], "train.steps") == str(11 + 5 + 3)
    assert "captions_200/scratch_equal_total_seed1" not in made
    assert made["teacher_eval"][0] == "scripts/eval_zeroshot.py"


def test_recipe_refuses_a_teacher_folder_that_is_no_export_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/recipe.py", "--source", "fashion-mnist", "--out",
                           str(tmp_path / "out"), "--data", str(tmp_path / "data"), "--teacher",
                           f"local-dir:{tmp_path}"], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is not an open_clip export" in proc.stderr and "export_open_clip.py" in proc.stderr
    assert not (tmp_path / "data").exists()  # refused before any step ran


def test_gap_marks_only_cells_beyond_their_seed_spread():
    assert gap([0.80, 0.82], [0.70, 0.71])["beats_noise"]
    close = gap([0.75, 0.79], [0.74, 0.76])           # +2 points, spreads 2.8 + 1.4
    assert not close["beats_noise"] and not close["loses_beyond_noise"]
    assert gap([0.60, 0.61], [0.70, 0.71])["loses_beyond_noise"]
    assert gap([0.8, 0.9], [0.7, 0.7])["gap_std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))


def test_own_data_pool_of_images_only_and_existing_shards_as_a_caption_source(fmnist_shards, tmp_path):
    from PIL import Image

    from common.datasets.shard_writer import ShardOptions, make_shards
    for i, name in enumerate(("a/1.png", "a/b/2.jpg", "3.png")):
        (tmp_path / "imgs" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 7), (i, 2 * i, 3)).save(tmp_path / "imgs" / name)
    summary = make_shards(ShardOptions(source=f"images:{tmp_path / 'imgs'}", out=str(tmp_path / "pool"),
                                       test_fraction=0.0))
    assert summary == {"train": {"written": 3, "skipped_bad_image": 0}}
    assert sorted(tuple(s) for s in read_samples(str(tmp_path / "pool" / "train"))) == [("jpg",), ("png",), ("png",)]
    make_shards(ShardOptions(source=f"shards:{fmnist_shards / 'train'}", out=str(tmp_path / "re"), test_fraction=0.25))
    train, test = (read_samples(str(tmp_path / "re" / split)) for split in ("train", "test"))
    assert (len(train), len(test)) == (384, 128) and all("cls" in s for s in train + test)
    assert (tmp_path / "re" / "classnames.txt").read_text() == (fmnist_shards / "classnames.txt").read_text()
    r = Recipe(f"csv:{tmp_path / 'pairs.csv'}", tmp_path / "out", tmp_path / "data", SIZES, pool=f"images:{tmp_path}")
    made = runs(r)
    assert made["pool_data"][made["pool_data"].index("--source") + 1] == f"images:{tmp_path}"
    assert made["pool"][-2:] == [str(tmp_path / "data" / "pool_source" / "train"), str(tmp_path / "data" / "pool")]


def test_a_step_is_reused_only_when_finished_with_the_same_arguments(tmp_path):
    """Mutation checked: `Ledger.finished` without its argument comparison reruns nothing after a change — fails."""
    import json

    from recipe_runner import Ledger, Step

    from common.artifacts import ENGINE_STATE_FILE, checkpoint_dir
    args = ("-m", "stage2_contrastive.train", f"train.output_dir={tmp_path / 'run'}", "train.steps=7")
    (tmp_path / "steps_done.json").write_text(json.dumps({"init_seed0": args, "stage1_check": ["x"]}))
    ledger = Ledger(tmp_path)
    assert not ledger.finished(Step("init_seed0", args))                  # no complete checkpoint yet
    checkpoint_dir(tmp_path / "run", 7).mkdir(parents=True)
    assert not ledger.finished(Step("init_seed0", args))                  # a checkpoint without its marker
    (checkpoint_dir(tmp_path / "run", 7) / ENGINE_STATE_FILE).write_text("{}")
    assert ledger.finished(Step("init_seed0", args))
    assert not ledger.finished(Step("init_seed0", (*args, "loss=sigmoid")))
    assert not ledger.finished(Step("init_seed1", args))
    assert not Ledger(tmp_path, fresh=True).finished(Step("init_seed0", args))
    out = tmp_path / "check.json"
    assert not ledger.finished(Step("stage1_check", ("x",), out))
    out.write_text("{}")
    assert ledger.finished(Step("stage1_check", ("x",), out))
