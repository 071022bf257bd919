"""A stage-2 run with contrastive accumulation, exported: the model card states the batch figures the run
trained with — the samples per step the engine counted drawing them, and the contrastive batch of
micro-batch × contrastive_accum × processes."""
from __future__ import annotations

import re

import pytest

from common.export import export_open_clip
from stage2_contrastive.train import main
from tests.support.run_records import loss_records
from tests.support.tiny import STAGE2_CONFIG

pytestmark = pytest.mark.slow
CARD_BATCH = re.compile(r"(\d+) steps × (\d+) samples per step \(contrastive batch (\d+) = (\d+) per process × "
                        r"contrastive_accum (\d+) × (\d+) processes; × grad_accum (\d+)\)")


def test_a_run_with_contrastive_accumulation_exports_a_card_with_its_batch_figures(stage2_overrides, fmnist_shards,
                                                                                   tmp_path):
    """`train.contrastive_accum=4` over micro-batches of 2: the engine draws 8 samples per step (counted per
    source: two sources, so every sample is tagged), and the card says 8 samples per step, contrastive
    batch 8 = 2 per process × contrastive_accum 4 × 1 process.
    Mutation: drop `contrastive_accum` from `RunContext.contrastive_batch` (common/run_context.py) or from the
    card's line (common/export/model_card.py `run_line`) — the card says 2, or leaves the factor out, and this
    fails."""
    train = fmnist_shards / "train"
    mix = (f"data.train_shards=[{{shards: '{train}/shard-000000.tar,{train}/shard-000001.tar', name: a}}, "
           f"{{shards: '{train}/shard-000002.tar,{train}/shard-000003.tar', name: b}}]")
    assert main(["--config", STAGE2_CONFIG, *stage2_overrides, mix, "train.batch_size=2", "train.contrastive_accum=4",
                 "train.steps=2", "data.eval_max_samples=16", "data.final_eval_max_samples=16"]) == 0
    run = tmp_path / "run"
    drawn = [sum(r["source_draws"].values()) for r in loss_records(run)]  # samples drawn so far, at steps 1, 2
    assert drawn == [8, 16]
    card = (export_open_clip(run, tmp_path / "export") / "README.md").read_text()
    found = CARD_BATCH.search(card)
    assert found, card
    steps, per_step, contrastive, micro, accum, processes, grad_accum = map(int, found.groups())
    assert (steps, micro, accum, processes, grad_accum) == (2, 2, 4, 1, 1)
    assert per_step == contrastive == drawn[1] - drawn[0] == micro * accum * processes * grad_accum
