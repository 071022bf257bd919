"""Launch helpers for multi-process tests: a free localhost port, a torchrun command line, ranks started
one process each (as `srun` starts them: the test sees every rank's exit status and can signal one), and
the linear-task run the reliability tests compare with."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# the linear-task run of the reliability tests: checkpoints at steps 3, 6, 9; every step logged and slowed
LINEAR_RUN = ["train.steps=12", "train.save_every=3", "step_sleep=0.15"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *module_and_args: str) -> list[str]:
    """`python -m torch.distributed.run` on localhost with `nproc` processes and a free port."""
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
            "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", *module_and_args]


def subprocess_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)


def linear_run(nproc: int, out: Path, *args: str) -> list[str]:
    """The command line of the linear task on `nproc` processes (1: plain python, else torchrun)."""
    if nproc == 1:
        return [sys.executable, "-m", "tests.support.tasks.linear_task", str(out), *args]
    return torchrun(nproc, "tests.support.tasks.linear_task", str(out), *args)


def spawn_ranks(nproc: int, logs: Path, *module_and_args: str) -> list[subprocess.Popen]:
    """`nproc` processes of `python -m MODULE ARGS`, one per rank, with the environment torchrun would
    give them; rank r's stderr goes to `logs/rank{r}.err`."""
    logs.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        env = subprocess_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                             LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        with (logs / f"rank{rank}.err").open("w") as err:
            procs.append(subprocess.Popen([sys.executable, "-m", *module_and_args], cwd=ROOT, env=env,
                                          stdout=subprocess.DEVNULL, stderr=err))
    return procs
