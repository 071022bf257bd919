"""Launch helpers for multi-process tests: a free localhost port, a torchrun command line, ranks started
one process each (as `srun` starts them: the test sees every rank's exit status and can signal one), the
linear-task run the reliability tests compare with, and waiting for a run to log a step (to fault it there)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
# the linear-task run of the reliability tests: checkpoints at steps 3, 6, 9; every step logged and slowed
LINEAR_RUN = ["train.steps=12", "train.save_every=3", "step_sleep=0.15"]
# added to a LINEAR_RUN that a test faults after step 8: rank `stall_rank` sleeps through step 9 (the 9th step
# of this process; a resumed process starts counting again), so the step-9 checkpoint is never written before
# the fault however late the test sees step 8 (nothing else changes: the sleep is inside the step)
STALL_AT_STEP_9 = ["stall_at_step=9", "stall_s=600"]


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


def wait_until_logged(run_dir: Path, step: int, procs: list, timeout: float = 240) -> None:
    """Return once the run in `run_dir` has logged `step` (failing if one of `procs` ended before)."""
    from tests.support.run_records import losses  # here: the ranks spawned from this module import it light
    deadline = time.monotonic() + timeout
    while max(losses(run_dir), default=0) < step:
        assert all(p.poll() is None for p in procs), "the run ended before the fault could be injected"
        assert time.monotonic() < deadline, "the run never reached the step of the fault"
        time.sleep(0.02)


def kill_when_logged(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    """SIGKILL the launcher's process group and every process under it once `step` has been logged
    (mid-training, after a checkpoint). torchrun starts each worker in a session of its own, so killing
    the launcher's group alone would leave the workers training on."""
    wait_until_logged(run_dir, step, [proc], timeout)
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for worker in workers:
        with contextlib.suppress(psutil.NoSuchProcess):
            worker.kill()
    proc.wait(timeout=60)
    _, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, f"still running after SIGKILL: {alive}"


def run_script(*args: str, timeout: float = 1200) -> None:
    """`python ARGS` in the repository, failing with the end of its output if it fails."""
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
