"""common/data/eval_sets.py (checked at start-up by common/data/run_data.py): a zero-shot set named in
`eval.zeroshot` takes its class names and templates from files, and a set that cannot be what the config says
is a one-line error, from the check and from the command before any model is built."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from common.config.schema import load_config
from common.data.run_data import check_run_data
from common.data.shard_list import resolve_shards
from common.data.streams import make_eval_loader
from common.errors import ConfigError
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from stage2_contrastive.train import main
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2, single_process_run

CONFIG = STAGE2_CONFIG

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
