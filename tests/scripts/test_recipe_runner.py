"""scripts/recipe_runner.py: steps run side by side when their inputs are ready and never before, a command two
recipes share runs once, each step's CPU seconds are its own, and a failure stops the call and names the step.
The steps are tiny `python -c` programs: nothing is trained here."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from recipe_runner import Ledger, Step, StepFailed, execute


def py(code: str) -> tuple[str, ...]:
    return ("-c", code)


def wait_for(path: Path, seconds: float = 20) -> str:
    """A program that waits for `path` to appear (exit 3 after `seconds`)."""
    return (f"import pathlib, sys, time\nend = time.time() + {seconds}\n"
            f"while not pathlib.Path({str(path)!r}).exists():\n"
            f"    time.sleep(0.05)\n    sys.exit(3) if time.time() > end else None\n")


def touch(path: Path, delay: float = 0.0) -> str:
    return f"import pathlib, time; time.sleep({delay}); pathlib.Path({str(path)!r}).write_text('x')"


def test_independent_steps_run_at_once_with_two_jobs(tmp_path):
    """Mutation checked: `execute` starting one step at a time whatever `jobs` — the waiter times out, fails."""
    signal = tmp_path / "signal"
    steps = [Step("waiter", py(wait_for(signal, 20))), Step("signaller", py(touch(signal)))]
    execute([(Ledger(tmp_path), steps)], jobs=2)
    done = json.loads((tmp_path / "steps_done.json").read_text())
    assert set(done) == {"waiter", "signaller"}
    assert (tmp_path / "logs" / "waiter.log").is_file()  # with several jobs each step writes its own log


def test_a_step_starts_only_after_the_steps_it_comes_after(tmp_path):
    """Mutation checked: ignoring `after` when choosing ready steps — the reader starts before the file, fails."""
    made = tmp_path / "made"
    check = f"import pathlib, sys; sys.exit(0 if pathlib.Path({str(made)!r}).exists() else 4)"
    steps = [Step("writer", py(touch(made, delay=1.0))), Step("reader", py(check), after=("writer",))]
    execute([(Ledger(tmp_path), steps)], jobs=2)
    assert json.loads((tmp_path / "step_times.json").read_text()).keys() == {"writer", "reader"}


def test_a_command_two_recipes_share_runs_once_and_both_ledgers_record_it(tmp_path):
    counter = tmp_path / "count"
    shared = Step("data", py(f"open({str(counter)!r}, 'a').write('x')"))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    execute([(Ledger(a), [shared, Step("use", py("pass"), after=("data",))]),
             (Ledger(b), [shared, Step("use", py("pass;"), after=("data",))])], jobs=2)
    assert counter.read_text() == "x"
    assert "data" in json.loads((a / "steps_done.json").read_text())
    assert "data" in json.loads((b / "steps_done.json").read_text())


def test_each_step_is_charged_its_own_cpu_seconds(tmp_path):
    burn = py("import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass")
    execute([(Ledger(tmp_path), [Step("burn", burn), Step("sleep", py("import time; time.sleep(1.0)"))])], jobs=2)
    times = json.loads((tmp_path / "step_times.json").read_text())
    assert times["burn"]["cpu_s"] >= 0.9 and times["sleep"]["cpu_s"] < 0.5
    assert times["sleep"]["wall_s"] >= 1.0


def test_a_failed_step_stops_the_call_names_the_step_and_keeps_its_exit_status(tmp_path):
    """A bad-input step (exit 2) keeps its status; the step running beside it is stopped, the ones after it never
    start, and the error quotes the end of the failed step's log."""
    never, start = tmp_path / "never", time.perf_counter()
    steps = [Step("slow", py("import time; time.sleep(60)")),
             Step("bad", py("import sys; print('--captions 600 is more than the 512 pairs'); sys.exit(2)")),
             Step("later", py(touch(never)), after=("bad",))]
    with pytest.raises(StepFailed, match="step 'bad' failed \\(exit code 2\\)") as err:
        execute([(Ledger(tmp_path), steps)], jobs=2)
    assert err.value.code == 2 and "--captions 600 is more than the 512 pairs" in str(err.value)
    assert not never.exists() and time.perf_counter() - start < 30  # `slow` was stopped, not waited for


def test_parallel_steps_get_their_share_of_the_cores_threads(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    env = tmp_path / "env.json"
    show = py("import json, os\n"
              "print(json.dumps({k: os.environ.get(k) for k in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS')}))")
    execute([(Ledger(tmp_path), [Step("show", show, stdout=env)])], jobs=2)
    assert json.loads(env.read_text()) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}


def test_a_plan_naming_a_step_it_does_not_list_first_is_refused(tmp_path):
    with pytest.raises(ValueError, match="step 'b' comes after \\['a'\\]"):
        execute([(Ledger(tmp_path), [Step("b", py("pass"), after=("a",)), Step("a", py("pass"))])])
