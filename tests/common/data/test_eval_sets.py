"""Evaluation sets beyond the training data: zero-shot sets named in `eval.zeroshot` (class names from a
file, templates from a file), caption-only shards in img2dataset's layout that train and evaluate with no
labels at all, and the one-line errors for sets that cannot be what the config says they are."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.data.run_data import check_run_data
from common.data.shard_list import resolve_shards, shard_sizes
from common.data.streams import make_eval_loader
from common.errors import ConfigError
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from stage2_contrastive.train import main
from tests.conftest import TINY_STAGE2, single_process_run

CONFIG = "configs/stage2/fmnist_tiny.yaml"
NAMES = [f"garment number {i}" for i in range(10)]  # not the set's own classnames.txt
TEMPLATES = ["a picture of {c}.", "{c}, seen from above"]


def zeroshot_item(shards: Path, **kw: str) -> str:
    fields = ", ".join(f"{k}: '{v}'" for k, v in {"name": "fm", "shards": shards, **kw}.items())
    return f"eval.zeroshot=[{{{fields}}}]"


@torch.no_grad()
def reference_zeroshot(task: ContrastiveTask, clip: torch.nn.Module, shards: Path, names: list[str],
                       templates: list[str]) -> dict[str, float]:
    """Top-1/top-5 by hand: each class's weight is the normalised mean of its normalised prompt embeddings."""
    prompts = [[t.replace("{c}", name) for t in templates] for name in names]
    weights = torch.stack([F.normalize(F.normalize(clip.encode_text(task.tokenizer(p)), dim=-1).mean(0), dim=0)
                           for p in prompts])
    def sample(image, meta):
        return {"image": task.eval_tf(image), "label": meta["cls"]}
    hits, n = torch.zeros(2), 0
    for batch in make_eval_loader(resolve_shards(str(shards)), sample, 64):
        logits = F.normalize(clip.encode_image(batch["image"]), dim=-1) @ weights.T
        rank = (logits > logits.gather(1, batch["label"][:, None])).sum(1)  # 0 = the label scores highest
        hits += torch.tensor([(rank < 1).sum(), (rank < 5).sum()])
        n += len(rank)
    return {"zeroshot_top1": float(hits[0] / n), "zeroshot_top5": float(hits[1] / n), "n": n}


def test_a_zero_shot_set_takes_its_class_names_and_templates_from_files(fmnist_shards, tmp_path):
    (tmp_path / "names.txt").write_text("\n".join(NAMES) + "\n")
    (tmp_path / "templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    item = zeroshot_item(fmnist_shards / "test", classnames=tmp_path / "names.txt",
                         templates=tmp_path / "templates.txt")
    cfg = load_config(Stage2Config, CONFIG, [*TINY_STAGE2, f"data.train_shards={fmnist_shards / 'train'}",
                                             "data.eval_shards=", item])
    task = ContrastiveTask(cfg, single_process_run())
    torch.manual_seed(0)
    clip = task.build_model().eval()
    metrics = task.evaluate(clip, final=True)
    assert set(metrics) == {"fm"}  # no held-out split: the named set alone
    expected = reference_zeroshot(task, clip, fmnist_shards / "test", NAMES, TEMPLATES)
    assert metrics["fm"] == pytest.approx(expected, abs=1e-9) and expected["n"] == 128
    own_names = (fmnist_shards / "classnames.txt").read_text().splitlines()
    assert expected != reference_zeroshot(task, clip, fmnist_shards / "test", own_names, TEMPLATES)  # it can tell


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
@torch.no_grad()
def test_the_held_out_loss_is_the_runs_own_loss_on_chunks_of_one_training_batch(fmnist_shards, loss):
    """The model's own forward and the run's loss module on consecutive chunks of `train.batch_size` held-out
    pairs (eval transform, first template), averaged: the eval's `loss`."""
    cfg = load_config(Stage2Config, CONFIG, [*TINY_STAGE2, f"loss={loss}", "data.eval_max_samples=20",
                                             f"data.train_shards={fmnist_shards / 'train'}",
                                             f"data.eval_shards={fmnist_shards / 'test'}"])
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    torch.manual_seed(0)
    clip = task.build_model().eval()
    rows = [r for b in task.data.eval_batches(task._eval_sample, final=False) for r in zip(b["image"], b["caption"])]
    chunks = [rows[s:s + 8] for s in (0, 8)]  # 20 pairs: two full chunks of 8, the last 4 left out
    values = []
    for chunk in chunks:
        out = clip(torch.stack([image for image, _ in chunk]), task.tokenizer([caption for _, caption in chunk]))
        values.append(float(task.loss_fn(out["image_features"], out["text_features"], out["logit_scale"],
                                         out.get("logit_bias"))))
    assert task.evaluate(clip)["loss"] == pytest.approx(sum(values) / 2, abs=1e-5)


@pytest.mark.slow
def test_img2dataset_shards_train_and_evaluate_without_labels(caption_shards, fmnist_shards, tmp_path, capsys):
    """img2dataset's output as it is (jpg + txt + json, parquet and stats files beside): stage 2 trains on
    it and evaluates the held-out pairs by loss and retrieval, no zero-shot number for them; a labelled
    zero-shot set beside them gets its own, and the final summary line names them all."""
    urls = resolve_shards(str(caption_shards / "test"))
    assert [Path(u).name for u in urls] == ["00000.tar", "00001.tar"] and shard_sizes(urls) == [16, 16]
    args = ["--config", CONFIG, *TINY_STAGE2, f"data.train_shards={caption_shards / 'train'}",
            f"data.eval_shards={caption_shards / 'test'}", f"train.output_dir={tmp_path / 'run'}", "train.steps=3",
            zeroshot_item(fmnist_shards / "test")]
    assert main(args) == 0
    records = read_metrics(tmp_path / "run")
    assert [r["skipped_samples"] for r in records if "loss" in r] == [0, 0, 0]
    final = [r["eval"] for r in records if "eval" in r][-1]
    assert set(final) == {"n", "loss", "fm", *(f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10))}
    assert final["n"] == 32 and final["loss"] > 0 and 0 < final["i2t_R@10"] <= 1
    assert set(final["fm"]) == {"zeroshot_top1", "zeroshot_top5", "n"}
    assert final["fm"]["n"] == 128  # the whole set at the end
    line = [out for out in capsys.readouterr().out.splitlines() if out.startswith("final eval")][-1]
    assert all(f"{key}=" in line for key in ("n", "loss", "i2t_R@1", "t2i_R@10", "fm/zeroshot_top1", "fm/n")), line


def check(cfg: Stage2Config) -> None:
    check_run_data(cfg.data, cfg.eval, single_process_run())


@pytest.mark.parametrize("case, message", [
    ("caption_only", "carry no class label (cls) — a zero-shot set needs labelled shards"),
    ("too_few_names", "eval.zeroshot[0].classnames names 9 classes but"),  # labels 0-9: one name short
    ("other_length", "names 12 classes, the set's own"),
    ("missing_names", "eval.zeroshot[0].classnames='/nonexistent/names.txt' does not exist"),
    ("no_names_beside", "has no classnames.txt beside its shards — set eval.zeroshot[0].classnames"),
    ("set_matches_nothing", "eval.zeroshot[0].shards='/nonexistent/set' matches no shard"),
    ("source_matches_nothing", "data.train_shards[1].shards='/nonexistent/more' matches no shard"),
    ("bad_template_file", "has no {c} for the class name"),
])
def test_sets_that_cannot_be_what_the_config_says_are_one_line_errors(fmnist_shards, caption_shards, tmp_path,
                                                                       case, message):
    for count in (5, 9, 12):
        (tmp_path / f"names{count}.txt").write_text("\n".join(f"c{i}" for i in range(count)) + "\n")
    (tmp_path / "templates.txt").write_text("a photo of a thing.\n")
    test = fmnist_shards / "test"
    override = {
        "caption_only": zeroshot_item(caption_shards / "test", classnames=tmp_path / "names5.txt"),
        "too_few_names": zeroshot_item(test, classnames=tmp_path / "names9.txt"),
        "other_length": zeroshot_item(test, classnames=tmp_path / "names12.txt"),
        "missing_names": zeroshot_item(test, classnames="/nonexistent/names.txt"),
        "no_names_beside": zeroshot_item(caption_shards / "test"),
        "set_matches_nothing": zeroshot_item("/nonexistent/set"),
        "source_matches_nothing": f"data.train_shards=[{{shards: '{fmnist_shards / 'train'}'}}, "
                                  "{shards: /nonexistent/more}]",
        "bad_template_file": zeroshot_item(test, templates=tmp_path / "templates.txt"),
    }[case]
    cfg = load_config(Stage2Config, CONFIG, [f"data.train_shards={fmnist_shards / 'train'}", override])
    with pytest.raises(ConfigError) as info:
        check(cfg)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_the_cli_refuses_a_caption_only_zero_shot_set_before_building_a_model(caption_shards, fmnist_shards,
                                                                               tmp_path, capsys):
    args = ["--config", CONFIG, *TINY_STAGE2, f"data.train_shards={fmnist_shards / 'train'}",
            f"train.output_dir={tmp_path / 'run'}", zeroshot_item(caption_shards / "test", classnames=fmnist_shards
                                                                   / "classnames.txt")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "needs labelled shards" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()
