"""Running a recipe's steps (`scripts/recipe.py`): each step one subprocess `python ARGS` from the repository
root, up to `jobs` at once as soon as the steps it comes after have finished, in plan order otherwise.

With one job a step's output goes to this terminal (its progress bar stays visible); with more, each step
writes `OUT/logs/<name>.log` and runs with `cores // jobs` torch threads (unless OMP_NUM_THREADS is set): two
one-thread runs of these small models do twice the work of one two-thread run on a 2-core machine. A failed
step stops the call: the steps still running are stopped, and the error names the step and its log.

Every recipe folder keeps a ledger: `step_times.json` (wall and CPU seconds of each step: user + system of its
process and every process it waited for), `steps_done.json` (the arguments each finished step ran with: a
later call skips a step whose arguments match and whose output is complete) and `last_call.json`.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional

ROOT = Path(__file__).resolve().parents[1]
BAD_INPUT = 2  # a step's exit status for bad input (common.errors): the call exits with it too


@dataclass(frozen=True)
class Step:
    """One step of a recipe."""
    name: str                            # unique in its recipe folder, e.g. "stage1", "captions_200/init_seed0"
    args: tuple[str, ...]                # python arguments
    stdout: Optional[Path] = None        # a file for its stdout (a JSON result); None: the terminal or its log
    after: tuple[str, ...] = ()          # steps of the same recipe that must finish first
    requires: Optional[Path] = None      # skipped (with `why`) when this file is missing as it would start
    why: str = ""
    always: bool = False                 # run even when an earlier call finished it (the report)


class StepFailed(RuntimeError):
    """A step exited non-zero; `code` is its exit status."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class Ledger:
    """A recipe folder's record of its steps (module doc)."""

    def __init__(self, out: Path, fresh: bool = False):
        self.out = out
        self.times: dict[str, dict[str, float]] = {} if fresh else _read(out / "step_times.json")
        self.done: dict[str, list[str]] = {} if fresh else _read(out / "steps_done.json")
        self.call: dict[str, object] = {"wall_s": 0.0, "cpu_s": 0.0, "run": [], "skipped": []}

    def finished(self, step: Step) -> bool:
        """An earlier call finished `step` with the same arguments: a training run whose last checkpoint
        (written after its final eval) is complete, or a step whose output file is there."""
        if self.done.get(step.name) != list(step.args):
            return False
        output_dir = _value(step.args, "train.output_dir")
        if output_dir is None:
            return step.stdout is not None and step.stdout.is_file() and step.stdout.stat().st_size > 0
        from common.artifacts import checkpoint_dir, complete_checkpoints
        return checkpoint_dir(output_dir, int(_value(step.args, "train.steps"))) in complete_checkpoints(output_dir)

    def record(self, step: Step, wall_s: float, cpu_s: float, call_wall_s: float, call_cpu_s: float) -> None:
        self.times[step.name] = {"wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1)}
        self.done[step.name] = list(step.args)
        self.call["run"].append(step.name)
        self.call.update(wall_s=round(call_wall_s, 1), cpu_s=round(call_cpu_s, 1))
        for name, value in (("step_times.json", self.times), ("steps_done.json", self.done),
                            ("last_call.json", self.call)):
            (self.out / name).write_text(json.dumps(value, indent=1))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _value(args: tuple[str, ...], key: str) -> Optional[str]:
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")), None)


@dataclass
class _Job:
    """A step to run once, and the ledgers (recipe folders) that list it: the same command in two recipes
    (their shared data) runs once."""
    step: Step
    ledgers: list[Ledger]
    label: str                           # the step's name, under its recipe's folder when it is not the first's
    after: set[int] = field(default_factory=set)
    state: str = "waiting"               # waiting | running | done | skipped
    started: float = 0.0
    proc: Optional[subprocess.Popen] = None
    files: list[IO] = field(default_factory=list)


def _jobs(plans: list[tuple[Ledger, list[Step]]]) -> list[_Job]:
    """One job per distinct command, in plan order, with its dependencies as job indices."""
    jobs: list[_Job] = []
    by_command: dict[tuple, int] = {}
    for ledger, steps in plans:
        index_of: dict[str, int] = {}
        where = _folder_label(ledger.out, plans[0][0].out)
        for step in steps:
            key = (step.args, step.stdout)
            if key not in by_command:
                by_command[key] = len(jobs)
                jobs.append(_Job(step, [], f"{where}{step.name}"))
            i = index_of[step.name] = by_command[key]
            jobs[i].ledgers.append(ledger)
            missing = [name for name in step.after if name not in index_of]
            if missing:
                raise ValueError(f"step '{step.name}' comes after {missing}, which the plan lists later or not at all")
            jobs[i].after |= {index_of[name] for name in step.after}
    return jobs


def run_step(name: str, args: tuple[str, ...] | list[str]) -> tuple[float, float]:
    """Run one step now, its output going where this process's goes; (wall seconds, CPU seconds of it and every
    process it waited for). Raises `StepFailed`."""
    job = _Job(Step(name, tuple(args)), [], name)
    _start(job, 1, dict(os.environ))
    _, status, usage = os.wait4(job.proc.pid, 0)
    code, wall, cpu = _finish(job, status, usage)
    if code != 0:
        raise _failure(job, code)
    return wall, cpu


def _folder_label(out: Path, first: Path) -> str:
    """A label's prefix: none in the first recipe's folder, else the folder under the first's (or its name) + "/"."""
    if out == first:
        return ""
    return f"{out.relative_to(first) if out.is_relative_to(first) else out.name}/"


def threads_per_job(jobs: int) -> Optional[str]:
    """OMP_NUM_THREADS for each of `jobs` parallel steps (None: one job, leave torch's default)."""
    if jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return str(max(1, (os.cpu_count() or 1) // jobs))


def _start(job: _Job, jobs: int, env: dict[str, str]) -> None:
    step = job.step
    if jobs > 1:
        logs = job.ledgers[0].out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = (logs / (step.name.replace("/", "__") + ".log")).open("w")
        job.files.append(log)
        print(f"=== [{job.label}] started: python {' '.join(step.args)}  (log: {log.name})", flush=True)
        out, err = log, log
    else:
        print(f"\n=== [{job.label}] python {' '.join(step.args)}", flush=True)
        out, err = None, None
    if step.stdout is not None:
        out = step.stdout.open("w")
        job.files.append(out)
    job.started, job.state = time.perf_counter(), "running"
    job.proc = subprocess.Popen([sys.executable, *step.args], cwd=ROOT, stdout=out, stderr=err, env=env)


def _finish(job: _Job, status: int, usage: "os.struct_rusage") -> tuple[int, float, float]:
    """Close a job whose process exited with wait `status`: (exit code, wall s, CPU s); says so when it succeeded."""
    job.proc.returncode = code = os.waitstatus_to_exitcode(status)
    for f in job.files:
        f.close()
    wall, cpu = time.perf_counter() - job.started, usage.ru_utime + usage.ru_stime
    if code == 0:
        job.state = "done"
        print(f"=== [{job.label}] done in {wall:.0f} s ({cpu:.0f} CPU s)", flush=True)
    return code, wall, cpu


def _failure(job: _Job, code: int) -> StepFailed:
    where = "its output is above"
    if job.files and job.files[0].name.endswith(".log"):
        tail = Path(job.files[0].name).read_text(errors="replace").splitlines()[-15:]
        where = f"its log {job.files[0].name} ends:\n" + "\n".join(tail)
    return StepFailed(f"step '{job.label}' failed (exit code {code}) — {where}", code)


def _stop(running: list[_Job]) -> None:
    """SIGTERM the steps still running (a training run checkpoints and exits), then wait for them."""
    for job in running:
        job.proc.send_signal(signal.SIGTERM)
    for job in running:
        job.proc.wait()
        print(f"=== [{job.label}] stopped", flush=True)


def _wait_any(running: list[_Job]) -> tuple[_Job, int, "os.struct_rusage"]:
    """Wait until one of `running` exits (only our own children are reaped); its job, wait status and usage."""
    while True:
        for job in running:
            pid, status, usage = os.wait4(job.proc.pid, os.WNOHANG)
            if pid == job.proc.pid:
                return job, status, usage
        time.sleep(0.1)


def execute(plans: list[tuple[Ledger, list[Step]]], jobs: int = 1, fresh: bool = False) -> None:
    """Run the steps of every plan (module doc); raises `StepFailed` naming the first step that failed."""
    all_jobs, start = _jobs(plans), time.perf_counter()
    env = dict(os.environ)
    if (threads := threads_per_job(jobs)) is not None:
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    cpu_total = 0.0
    while True:
        for job in all_jobs:
            if job.state != "waiting" or any(all_jobs[i].state not in ("done", "skipped") for i in job.after):
                continue
            if sum(j.state == "running" for j in all_jobs) >= jobs:
                break
            if _skip(job, fresh):
                continue
            _start(job, jobs, env)
        running = [j for j in all_jobs if j.state == "running"]
        if not running:
            break
        job, status, usage = _wait_any(running)
        code, wall, cpu = _finish(job, status, usage)
        if code != 0:
            _stop([j for j in running if j is not job])
            raise _failure(job, code)
        cpu_total += cpu
        for ledger in job.ledgers:
            ledger.record(job.step, wall, cpu, time.perf_counter() - start, cpu_total)
    waiting = [j.label for j in all_jobs if j.state == "waiting"]
    if waiting:
        raise RuntimeError(f"steps never became ready: {waiting}")


def _skip(job: _Job, fresh: bool) -> bool:
    """Mark `job` skipped (and say why) when its required file is missing or an earlier call finished it."""
    step = job.step
    if step.requires is not None and not step.requires.is_file():
        print(f"=== [{job.label}] skipped: {step.why}", flush=True)
    elif not fresh and not step.always and all(ledger.finished(step) for ledger in job.ledgers):
        print(f"=== [{job.label}] finished by an earlier call with the same arguments: not run again", flush=True)
        for ledger in job.ledgers:
            ledger.call["skipped"].append(step.name)
    else:
        return False
    job.state = "skipped"
    return True
