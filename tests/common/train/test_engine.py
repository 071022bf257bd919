"""common/train/engine.py, the ONE training loop, in this process:
- on the tiny linear task (tests/support/tasks/linear_task.py): it learns, writes its run folder, and a run
  resumed after a crash, or from a preemption checkpoint with gradient accumulation, equals the
  uninterrupted one;
- `fit` shields its loader workers from stop signals while it runs;
- `train.grad_accum` (tests/support/tasks/stream_task.py, whose micro-batches partition the big batch): K
  micro-batches of B and one optimizer step equal one step on a batch of K·B (same logged loss and gradient
  norm every step, same final weights), and a skipped step discards its whole accumulation group;
- no host-device sync in a step between log steps: on CPU, every Python-level read of a tensor's value is
  counted per loop iteration of the real engine on the tiny stage-2 model (with and without contrastive
  accumulation) and the tiny stage-1 student + frozen teacher (batches pre-built on the device, so the
  loader's own CPU work is not counted); it must be 0 except at log steps. On CUDA: the same steps under
  `torch.cuda.set_sync_debug_mode("error")`, which raises on any synchronising call. (What the CPU counter
  counts: tests/support/host_reads.py, checked one operation at a time here.)
(2 gloo processes: tests/multiprocess/test_engine.py.)"""
from __future__ import annotations

import os
import signal
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from common import stop_signals
from common.artifacts import complete_checkpoints, read_metrics
from common.config.schema import load_config
from common.train.engine import Trainer, train
from common.train.preemption import REQUEUE_EXIT_STATUS
from tests.support.host_reads import HostReadCounter
from tests.support.run_records import assert_resumed_exactly, losses
from tests.support.shards import train_loader
from tests.support.tasks import linear_task
from tests.support.tasks.linear_task import Crash, run_linear
from tests.support.tasks.stage2_step import global_batch, stage2_config
from tests.support.tasks.stream_task import StreamConfig, StreamTask
from tests.support.teachers import save_native_vit_folder
from tests.support.tiny import stage1_args


def test_engine_trains_and_writes_run_outputs(tmp_path):
    records = run_linear(tmp_path)
    curve = losses(tmp_path)
    assert curve[30] < 0.1 * curve[1], curve
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "model.safetensors").is_file()
    assert any("eval" in r for r in records)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_00000030"]


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    full = run_linear(tmp_path / "full", "train.save_every=10")
    with pytest.raises(Crash):
        run_linear(tmp_path / "crashed", "train.save_every=10", "crash_at_step=15")
    assert [p.name for p in complete_checkpoints(tmp_path / "crashed")] == ["step_00000010"]
    run_linear(tmp_path / "crashed", "train.save_every=10", resume="auto")
    # the second process began at step 10 (not 0), logged steps 11..30 once; losses and weights bit-identical
    assert_resumed_exactly(tmp_path / "crashed", tmp_path / "full", from_step=10)
    drawn = [r["batch_sum"] for r in full if "loss" in r]
    assert len(set(drawn)) == len(drawn) == 30  # the stream restarted at each checkpoint replays no batch



def test_a_resume_from_a_preemption_checkpoint_skips_every_pass_of_the_steps_it_trained(tmp_path):
    """`train.grad_accum=2`: a SIGTERM in step 3 (the 5th micro-batch) checkpoints at step 3, whose stream
    started at the periodic step 2; the resumed stream moves on by (3 − 2) steps × 2 passes, so the resumed run
    equals the uninterrupted one, losses and weights bit for bit.
    Mutation (b): drop `× self.context.backward_passes` in `Trainer.batches` (common/train/engine.py) — the
    resumed stream moves on by 1 micro-batch instead of 2, step 4 trains on other samples, and this fails."""
    run = ["train.steps=6", "train.save_every=2", "train.grad_accum=2"]
    full = tmp_path / "full"
    run_linear(full, *run)
    out = tmp_path / "preempted"
    assert linear_task.main([str(out), *run, "signal_at_step=5"]) == REQUEUE_EXIT_STATUS  # call 5: step 3
    assert [p.name for p in complete_checkpoints(out)] == ["step_00000002", "step_00000003"]
    assert linear_task.main([str(out), *run, "--resume", "auto"]) == 0
    assert_resumed_exactly(out, full, from_step=3)


class ShieldProbe(StreamTask):
    """The stream task fed by a real loader worker (common/data/streams.py on the id shards): at its first
    micro-batch it sends that worker the stop signals a job step sends every process; at every micro-batch
    it records whether the loader workers are shielded and whether the worker still runs."""

    def __init__(self, cfg: StreamConfig, run: Any, shards: Path):
        super().__init__(cfg, run)
        self.shards, self.seen, self.worker = shards, [], None
        self.others = set(psutil.Process().children())  # processes this test process had before the run

    def train_batches(self, seed: int) -> Any:
        for batch in train_loader(self.shards, seed=seed, num_workers=1):
            x = torch.cat([batch["noise"], batch["noise"]], dim=1)  # [8, 4]
            yield {"x": x, "y": batch["id"].float()[:, None] / 40, "skipped": batch["skipped"]}

    def training_loss(self, model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        if self.worker is None:
            (self.worker,) = set(psutil.Process().children()) - self.others
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self.worker.send_signal(sig)
        alive = self.worker.is_running() and self.worker.status() != psutil.STATUS_ZOMBIE
        self.seen.append((stop_signals.loader_workers_shielded(), alive))
        return super().training_loss(model, batch)


def test_fit_shields_its_loader_workers_from_stop_signals_while_it_runs(id_shards, tmp_path):
    """While `fit` runs, the engine switches on the shield of common/stop_signals.py (and off after): a loader
    worker sent SIGTERM and SIGUSR1 at step 1 keeps serving the run's batches to its end.
    Mutation (c): drop `shield_loader_workers(True)` from `PreemptionWatch.start` (common/train/preemption.py,
    what `fit` starts) — the shield is never on during `fit`, the worker dies on SIGTERM, and this fails."""
    cfg = load_config(StreamConfig, None, [f"train.output_dir={tmp_path}", "train.steps=4"])
    tasks: list[ShieldProbe] = []
    assert not stop_signals.loader_workers_shielded()
    train(cfg, lambda run: tasks.append(ShieldProbe(cfg, run, id_shards)) or tasks[-1])
    assert tasks[0].seen == [(True, True)] * 4
    assert not stop_signals.loader_workers_shielded()
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [1, 2, 3, 4]

# ---- train.grad_accum ------------------------------------------------------------------------------
ACCUM, MICRO_BATCH = 4, 4


def run_stream(tmp_path, grad_accum: int, batch_size: int,
               *overrides: str) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """(the step records of metrics.jsonl, the final weights) of a 4-step run."""
    out = tmp_path / f"accum{grad_accum}_batch{batch_size}"
    cfg = load_config(StreamConfig, None, [f"train.output_dir={out}", f"train.grad_accum={grad_accum}",
                                           f"train.batch_size={batch_size}", *overrides])
    train(cfg, lambda run: StreamTask(cfg, run))
    return [r for r in read_metrics(out) if "loss" in r], load_file(str(out / "model.safetensors"))


def test_accumulated_micro_batches_equal_one_big_batch(tmp_path):
    accumulated, accumulated_weights = run_stream(tmp_path, ACCUM, MICRO_BATCH)
    big, big_weights = run_stream(tmp_path, 1, ACCUM * MICRO_BATCH)
    assert [r["step"] for r in accumulated] == [r["step"] for r in big] == [1, 2, 3, 4]
    for name in ("loss", "grad_norm"):  # grad_norm: scale-sensitive, unlike Adam's update
        assert [r[name] for r in accumulated] == pytest.approx([r[name] for r in big], rel=1e-5), name
    assert accumulated_weights.keys() == big_weights.keys()
    for key, value in big_weights.items():
        torch.testing.assert_close(accumulated_weights[key], value, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def big_batch_run_skipping_step_2(tmp_path_factory) -> tuple[list[dict], dict[str, torch.Tensor]]:
    return run_stream(tmp_path_factory.mktemp("big"), 1, ACCUM * MICRO_BATCH, "nan_at_calls=[2]")


@pytest.mark.parametrize("nan_micro_batch", [pytest.param(1, marks=pytest.mark.slow), 3,
                                             pytest.param(ACCUM, marks=pytest.mark.slow)])
def test_a_skipped_step_discards_its_whole_accumulation_group(tmp_path, big_batch_run_skipping_step_2,
                                                              nan_micro_batch):
    """A NaN loss on micro-batch m (first, middle, last) of step 2 (of K = ACCUM) skips step 2 as a whole:
    the run equals the big-batch run with step 2 skipped (same records, weights), so no micro-batch leaks
    into step 3 and the stream and accelerate's accumulation counter stay in step."""
    nan_call = ACCUM + nan_micro_batch  # micro-batches 1..K are step 1
    accumulated, accumulated_weights = run_stream(tmp_path, ACCUM, MICRO_BATCH, f"nan_at_calls=[{nan_call}]")
    big, big_weights = big_batch_run_skipping_step_2
    assert [r["bad_steps"] for r in accumulated] == [r["bad_steps"] for r in big] == [0, 1, 1, 1]
    for name in ("loss", "grad_norm"):
        assert [r[name] for r in accumulated] == pytest.approx([r[name] for r in big], rel=1e-5, nan_ok=True)
    for key, value in big_weights.items():
        torch.testing.assert_close(accumulated_weights[key], value, rtol=1e-5, atol=1e-6)


# ---- no host-device sync between log steps ---------------------------------------------------------
LOG_EVERY, STEPS = 3, 7


@pytest.fixture
def shards(request) -> Path:
    """train/ + test/ shards with classnames.txt: $EVACLIP_TEST_SHARDS (scripts/gpu_check.sh points it at
    the set it builds, from Fashion-MNIST or synthetic images) or the session's Fashion-MNIST set."""
    return Path(os.environ["EVACLIP_TEST_SHARDS"]) if "EVACLIP_TEST_SHARDS" in os.environ else \
        request.getfixturevalue("fmnist_shards")


def prebuilt_trainer(cfg: Any, make_task: Any, make_batch: Any, device: str, out: Path) -> Trainer:
    """The engine on the real task `make_task(cfg, run)`, fed `make_batch(task)` on `device` for ever."""
    cfg.train.output_dir, cfg.train.log_every, cfg.train.steps = str(out), LOG_EVERY, STEPS
    cfg.data.eval_shards = ""  # no evaluation: the steps alone

    def make(run: Any) -> Any:
        task = make_task(cfg, run)
        batch = {k: v.to(device) for k, v in make_batch(task).items()}
        task.train_batches = lambda seed: cycle([batch])
        return task
    return Trainer.build(cfg, make)


def stage2_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-2 model: real task, model, contrastive loss, logit-scale clamp."""
    from stage2_contrastive.task import ContrastiveTask
    return prebuilt_trainer(stage2_config("softmax", str(shards), world_size=1), ContrastiveTask, global_batch,
                            device, out)


def stage2_accum_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-2 model with contrastive accumulation K = 2 (cached features, re-forwarded passes)."""
    from stage2_contrastive.task import ContrastiveTask
    cfg = stage2_config("sigmoid", str(shards), world_size=1)
    cfg.train.contrastive_accum = 2
    return prebuilt_trainer(cfg, ContrastiveTask, global_batch, device, out)


def stage1_trainer(shards: Path, device: str, out: Path) -> Trainer:
    """The tiny stage-1 student against a frozen native-ViT teacher: real task, masking, cosine loss."""
    from stage1_mim.config import Stage1Config
    from stage1_mim.task import MimTask
    save_native_vit_folder(out / "teacher")
    args = stage1_args(shards, out, out / "teacher")
    cfg = load_config(Stage1Config, args[1], args[2:])

    def batch(task: MimTask) -> dict[str, torch.Tensor]:
        masks = torch.stack([torch.from_numpy(task.masker(np.random.default_rng(i)).reshape(-1))
                             for i in range(task.cfg.train.batch_size)])
        size = task.cfg.data.image_size
        return {"image": torch.randn(len(masks), 3, size, size, generator=torch.Generator().manual_seed(0)),
                "mask": masks}
    return prebuilt_trainer(cfg, MimTask, batch, device, out)


TRAINERS = {"stage2": stage2_trainer, "stage2_contrastive_accum": stage2_accum_trainer, "stage1": stage1_trainer}


def reads_per_step(trainer: Trainer, counter: HostReadCounter) -> list[int]:
    """Tensor reads in each loop iteration of `fit` (iteration i: from step i's start to step i+1's)."""
    marks: list[int] = []
    train_step = trainer.step

    def marked(batches: Any) -> Any:
        marks.append(counter.calls)
        return train_step(batches)
    trainer.step = marked
    trainer.fit()
    return [b - a for a, b in zip(marks, marks[1:])]



def test_the_host_read_counter_counts_every_way_to_read_a_tensor_on_the_host():
    """What `HostReadCounter` (tests/support/host_reads.py) counts as a read, one operation at a time, and what
    it leaves alone (operations that stay on the device).
    Mutation (e): the counter as it was (`.item()`, `.cpu()`, `.tolist()`, `bool()`, `int()`, `float()` only)
    misses `.numpy()`, `.to("cpu")`, `torch.equal` and boolean-mask indexing, and this fails."""
    x = torch.arange(6.0)
    grid, mask, rows = x.view(2, 3), x > 2, torch.tensor([True, False])
    reads = {"item": lambda: x[0].item(), "tolist": lambda: x.tolist(), "numpy": lambda: x.numpy(),
             "np.asarray": lambda: np.asarray(x), "cpu": lambda: x.cpu(), "bool": lambda: bool(x[1]),
             "int": lambda: int(x[1]), "float": lambda: float(x[1]), "nonzero": lambda: x.nonzero(),
             "to('cpu')": lambda: x.to("cpu"), "to(device='cpu')": lambda: x.to(device="cpu"),
             "to('cpu', dtype)": lambda: x.to("cpu", torch.float64),
             "torch.equal": lambda: torch.equal(x, x), "Tensor.equal": lambda: x.equal(x),
             "mask index": lambda: x[mask], "mask in a tuple index": lambda: grid[rows, 1]}
    stays = {"x + 1": lambda: x + 1, "to(dtype)": lambda: x.to(torch.float64),
             "to('cpu', non_blocking=True)": lambda: x.to("cpu", non_blocking=True),
             "to(its own device)": lambda: x.to(x.device), "to(like a tensor)": lambda: x.to(grid),
             "slice": lambda: x[1:3],
             "index tensor": lambda: x[torch.tensor([0, 2])], "int index": lambda: grid[0]}
    counted = {}
    with HostReadCounter() as counter:
        for name, op in {**reads, **stays}.items():
            before = counter.calls
            op()
            counted[name] = counter.calls - before
    assert {name: n for name, n in counted.items() if name in reads and n == 0} == {}
    assert {name: n for name, n in counted.items() if name in stays and n} == {}

@pytest.mark.slow  # three tiny engines built and run 7 steps each
@pytest.mark.parametrize("stage", list(TRAINERS))
def test_no_tensor_reads_between_log_steps_on_cpu(shards, tmp_path, stage):
    trainer = TRAINERS[stage](shards, "cpu", tmp_path)
    try:
        with HostReadCounter() as counter:
            reads = reads_per_step(trainer, counter)
    finally:
        trainer.close()
    logged = [step % LOG_EVERY == 0 for step in range(1, STEPS)]
    assert [n for n, log in zip(reads, logged) if not log] == [0] * logged.count(False), reads
    assert all(n > 0 for n, log in zip(reads, logged) if log), reads  # the counter sees the log step's reads


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch.cuda.set_sync_debug_mode raises "
                    "on host-device syncs of CUDA tensors only (scripts/gpu_check.sh runs this test on a GPU)")
@pytest.mark.parametrize("stage", list(TRAINERS))
def test_no_cuda_sync_between_log_steps(shards, tmp_path, stage):
    trainer = TRAINERS[stage](shards, "cuda", tmp_path)
    batches = trainer.batches()
    try:
        trainer.step(batches)  # warm-up: lazy initialisation may sync once
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(LOG_EVERY - 1):
                trainer.step(batches)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    finally:
        trainer.close()
