"""Stage 2 end to end through its command, on real (tiny) Fashion-MNIST shards: it learns, evaluates and writes
weights; bad samples are skipped and counted exactly while training goes on; it resumes exactly with loader
workers (skip count included); img2dataset's caption-only output trains and evaluates without labels."""
from __future__ import annotations

import io
import itertools
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from common.artifacts import read_metrics
from common.config.schema import load_config
from common.data.shard_list import resolve_shards, shard_sizes
from common.train.engine import data_seed
from common.weights.safe_load import load_weights
from stage2_contrastive.config import Stage2Config
from stage2_contrastive.task import ContrastiveTask
from stage2_contrastive.train import main
from tests.support.run_records import assert_resumed_exactly, loss_records, losses
from tests.support.shards import write_tar
from tests.support.tiny import STAGE2_CONFIG, TINY_STAGE2, single_process_run

CONFIG = STAGE2_CONFIG


def loss_on_its_batches(run: Path, steps: int) -> tuple[float, float]:
    """Mean contrastive loss (eval mode) of the run's initial model and of its final weights on the `steps`
    batches it trained on (its stream, drawn again as the engine seeds it)."""
    cfg = load_config(Stage2Config, run / "config.yaml")
    task = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size))
    torch.manual_seed(cfg.train.seed)  # as the engine seeds it before building the model
    initial = task.build_model().eval()
    trained = task.build_model().eval()
    trained.load_state_dict(load_weights(run / "model.safetensors"), strict=True)
    stream = task.train_batches(data_seed(cfg.train.seed, 0))
    batches = list(itertools.islice(stream, steps))
    with torch.no_grad():
        return tuple(sum(float(task.training_loss(model, b)[0]) for b in batches) / steps
                     for model in (initial, trained))


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_stage2_trains_evaluates_and_writes_weights(stage2_overrides, tmp_path, loss):
    assert main(["--config", CONFIG, f"loss={loss}", "train.steps=4", *stage2_overrides]) == 0
    run = tmp_path / "run"
    records = read_metrics(run)
    assert len(losses(run)) == 4
    before, after = loss_on_its_batches(run, steps=4)
    assert after < 0.9 * before, (before, after)  # it learned (measured: ×0.56 softmax, ×0.80 sigmoid)
    evals = [r["eval"] for r in records if "eval" in r]
    assert evals and 0.0 <= evals[-1]["zeroshot_top1"] <= 1.0 and evals[-1]["n"] == 128  # the final eval covers the whole split
    assert {"i2t_R@1", "t2i_R@10"} <= set(evals[-1])
    assert (run / "model.safetensors").is_file() and (run / "config.yaml").is_file()
    config = json.loads((run / "open_clip_config.json").read_text())
    assert ("init_logit_bias" in config["model_cfg"]) == (loss == "sigmoid")


def bad_shard_dir(fmnist_shards: Path, tmp_path: Path) -> Path:
    """The tiny shard set plus: a truncated copy of a shard, and a shard with an undecodable image and a
    sample that has neither caption nor label."""
    data = tmp_path / "bad"
    shutil.copytree(fmnist_shards / "train", data)
    (data.parent / "classnames.txt").write_text((fmnist_shards / "classnames.txt").read_text())
    good = sorted(data.glob("*.tar"))[0].read_bytes()
    (data / "shard-truncated.tar").write_bytes(good[: len(good) // 3])
    png = io.BytesIO()
    Image.new("L", (28, 28), 128).save(png, format="PNG")
    write_tar(data / "shard-broken.tar", [("broken-0.png", b"not a png at all"), ("broken-0.cls", b"3"),
                                          ("nolabel-0.png", png.getvalue())])
    return data


@pytest.mark.slow
def test_bad_samples_are_skipped_counted_exactly_and_training_goes_on(fmnist_shards, tmp_path):
    data = bad_shard_dir(fmnist_shards, tmp_path)
    out = tmp_path / "run"
    assert main(["--config", "configs/stage2/fmnist_tiny.yaml", f"data.train_shards={data}",
                 f"data.eval_shards={fmnist_shards / 'test'}", f"train.output_dir={out}", *TINY_STAGE2,
                 "train.steps=25", "train.batch_size=32", "data.shuffle_buffer=0"]) == 0
    counted = [r["skipped_samples"] for r in loss_records(out)]
    # the skips in the 25 batches the run drew, read off the same stream (seeded as the engine seeds it)
    cfg = load_config(Stage2Config, out / "config.yaml")
    stream = ContrastiveTask(cfg, single_process_run(cfg.train.batch_size)).train_batches(data_seed(cfg.train.seed, 0))
    drawn = itertools.accumulate(int(batch["skipped"].sum()) for batch in itertools.islice(stream, 25))
    assert counted == list(drawn) and counted[-1] > 0


BAD_PER_SHARD = 3


def shards_with_bad_samples(fmnist_shards: Path, out: Path, good_per_shard: int, shards: int = 4) -> Path:
    """`shards` shards, each BAD_PER_SHARD bad samples (undecodable image, neither caption nor label, no
    image) then `good_per_shard` good Fashion-MNIST samples. Without a shuffle buffer a stream then
    reads them in that pattern, so with batch size = `good_per_shard` every batch carries exactly
    BAD_PER_SHARD skips, whatever shards the stream draws and wherever it restarts."""
    out.mkdir(parents=True)
    shutil.copy(fmnist_shards / "classnames.txt", out / "classnames.txt")
    with tarfile.open(sorted((fmnist_shards / "train").glob("*.tar"))[0]) as tar:
        good = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # key.cls, key.png pairs
    png = dict(good)[next(name for name, _ in good if name.endswith(".png"))]
    pairs = 2 * good_per_shard
    for i in range(shards):
        bad = [(f"bad{i}-broken.png", b"not a png"), (f"bad{i}-broken.cls", b"3"), (f"bad{i}-nolabel.png", png),
               (f"bad{i}-noimage.cls", b"1")]
        write_tar(out / f"shard-{i}.tar", bad + good[i * pairs:(i + 1) * pairs])
    return out


@pytest.mark.slow
def test_stage2_resume_with_loader_workers_continues_identically_and_keeps_the_skip_count(
        stage2_overrides, fmnist_shards, tmp_path):
    batch = 8
    data = shards_with_bad_samples(fmnist_shards, tmp_path / "bad_shards", good_per_shard=batch)
    args = ["--config", CONFIG, *stage2_overrides, f"data.train_shards={data}", f"train.batch_size={batch}",
            "data.num_workers=2", "data.shuffle_buffer=0", "train.steps=6", "train.save_every=3"]
    assert main(args) == 0
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "run", crashed)  # as if killed after step 3's save:
    shutil.rmtree(crashed / "checkpoints" / "step_00000006")
    (crashed / "model.safetensors").unlink()
    assert main([*args, f"train.output_dir={crashed}", "--resume", "auto"]) == 0
    assert_resumed_exactly(crashed, tmp_path / "run", from_step=3)
    for run in (tmp_path / "run", crashed):  # every batch drawn carried BAD_PER_SHARD skips, also after the resume
        assert [r["skipped_samples"] for r in loss_records(run)] == [BAD_PER_SHARD * s for s in range(1, 7)]


def zeroshot_item(shards: Path, **kw: str) -> str:
    fields = ", ".join(f"{k}: '{v}'" for k, v in {"name": "fm", "shards": shards, **kw}.items())
    return f"eval.zeroshot=[{{{fields}}}]"


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
