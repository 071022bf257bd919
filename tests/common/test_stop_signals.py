"""common/stop_signals.py: while the shield is on, a loader worker outlives the stop signals a job step sends
every process (the training process checkpoints first); once it is off, a worker stops on them again.
(That the engine switches the shield on while `fit` runs: tests/common/train/test_engine.py.)"""
from __future__ import annotations

import multiprocessing
import os
import signal
import time

import psutil

from common import stop_signals
from tests.support.shards import ids, train_loader


def test_loader_workers_outlive_a_stop_signal_while_training(id_shards):
    # SLURM signals every process of a job step: the training process finishes its step and checkpoints
    # (common.train.preemption), so its loader workers must keep serving batches until then
    before = set(psutil.Process().children())
    stream = iter(train_loader(id_shards, num_workers=1))
    next(stream)
    (worker,) = set(psutil.Process().children()) - before
    stop_signals.shield_loader_workers(True)  # what the training loop does while it runs
    try:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            worker.send_signal(sig)
        assert len(ids([next(stream) for _ in range(4)])) == 32
        assert worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE
    finally:
        stop_signals.shield_loader_workers(False)
    del stream  # shut down as usual


def _worker_that_ignores_stop_signals_while_training(ready) -> None:
    stop_signals.ignore_stop_signals_while_training()
    ready.set()
    time.sleep(60)


def test_after_training_a_worker_stops_on_a_stop_signal_again():
    # else a loader left open at exit could not terminate its workers, and the exit would wait for them
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    worker = fork.Process(target=_worker_that_ignores_stop_signals_while_training, args=(ready,))
    stop_signals.shield_loader_workers(True)
    try:
        worker.start()
        assert ready.wait(timeout=60)
        os.kill(worker.pid, signal.SIGTERM)
        worker.join(timeout=1.0)
        assert worker.is_alive()
    finally:
        stop_signals.shield_loader_workers(False)
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=30)
    assert worker.exitcode == -signal.SIGTERM
