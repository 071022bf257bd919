"""Writing a checkpoint when writes can fail (a full disk, a quota, an unmounted volume).

Every rank writes its part into `step_X.tmp`; the ranks then agree whether every part was written before
the next collective phase. On a failure the partial `*.tmp` folder is removed, the previous complete
checkpoint stays as it was (so do the run's top-level weights files, which are replaced only by complete
new ones: `publish_weights`), and the run either stops with `CheckpointWriteError` — one line naming the
path and the errno — (`train.checkpoint_errors: stop`) or logs that line and goes on without this
checkpoint (`warn`). torch's own writer reports a full disk without an errno ("unexpected pos …"), so the
errno of such a failure is found by writing a probe file into the same folder.
"""
from __future__ import annotations

import errno as errno_codes
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from common.artifacts import WEIGHTS_STAGING_DIR, EngineState, complete_checkpoints
from common.config.sections import CheckpointErrors
from common.errors import RunFault
from common.train.checkpoint.manifest import seal
from common.train.collectives import gather_texts, max_over_ranks

log = logging.getLogger("evaclip")
PROBE_BYTES = 1 << 20


class CheckpointWriteError(RunFault):
    """A checkpoint could not be written; the message is one line naming the path and the errno."""


def probe_errno(folder: Path) -> int | None:
    """The errno a 1 MiB write into `folder` (or its nearest existing parent) fails with, None if it works."""
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    probe = folder / ".write_probe"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return err.errno
    finally:
        probe.unlink(missing_ok=True)
    return None


def describe_write_error(err: BaseException, folder: Path) -> str:
    """'PATH: ENOSPC (errno 28, No space left on device)' for a failed write into `folder`: the errno from
    the exception (OSError, or 'os error N' in a library's message), else from a probe write."""
    path = getattr(err, "filename", None) or folder
    code = getattr(err, "errno", None)
    if code is None:
        found = re.search(r"(?:os error|errno)\s*(\d+)", str(err), re.IGNORECASE)
        code = int(found.group(1)) if found else probe_errno(folder)
    text = " ".join(str(err).split())[:160]
    if code is None:
        return f"{path}: errno unknown ({type(err).__name__}: {text})"
    return f"{path}: {errno_codes.errorcode.get(code, '?')} (errno {code}, {os.strerror(code)})"


def temp_path(final: Path) -> Path:
    return final.with_name(final.name + ".tmp")


def finalize(tmp: Path, final: Path, state: EngineState, keep_last: int) -> None:
    """Seal `tmp` (the marker lists every file's size and hash), rename it to `final` (atomic on one file
    system) and rotate old checkpoints beyond `keep_last`."""
    seal(tmp, state)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(final.parent.parent)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def publish_weights(save_weights: Callable[[dict, Path], None], state_dict: dict, run_dir: Path) -> None:
    """The task's weights files at the run's top level, each replaced only once its new version is
    completely written (in `RUN/.weights.tmp/`, then renamed): a failed write leaves the previous ones."""
    staging = run_dir / WEIGHTS_STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(state_dict, staging)
    for item in sorted(staging.iterdir()):
        target = run_dir / item.name
        if item.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()


class CheckpointWrite:
    """One checkpoint's write across ranks: `attempt` each part, `agree` between collective phases,
    `finish` to clean up and report. `timeout_s`: the process-group timeout of the votes."""

    def __init__(self, accelerator: Any, final: Path, tmp: Path, on_error: CheckpointErrors, timeout_s: float):
        self.accelerator, self.final, self.tmp = accelerator, final, tmp
        self.on_error, self.timeout_s = on_error, timeout_s
        self.failure: str | None = None  # this rank's first failure, described
        if accelerator.is_main_process and tmp.exists():
            shutil.rmtree(tmp)  # left by a killed run: its files must not enter this manifest
        self.agree()

    def attempt(self, write: Callable[[], Any]) -> None:
        """Run one write of this rank unless an earlier one failed; an exception is recorded, not raised."""
        if self.failure is not None:
            return
        try:
            write()
        except Exception as err:  # noqa: BLE001 - torch, safetensors and OS errors alike: the disk said no
            self.failure = describe_write_error(err, self.tmp)

    def agree(self) -> bool:
        """True when every rank's writes so far succeeded (a collective: every rank calls it)."""
        failed = max_over_ranks(int(self.failure is not None), f"checkpoint {self.tmp.name}: the vote that "
                                "every rank wrote its part", self.timeout_s)
        return failed == 0

    def finish(self) -> bool:
        """Agree one last time; on a failure remove the partial folder, then raise (`stop`) or warn.
        Returns True when the checkpoint is complete."""
        if self.agree():
            return True
        completed = self.final.is_dir() and not self.tmp.exists()  # renamed: only the top-level copy failed
        texts = gather_texts(self.failure or "", "the gather of checkpoint write errors", self.timeout_s)
        rank, first = next((r, t) for r, t in enumerate(texts) if t)
        if self.accelerator.is_main_process:
            shutil.rmtree(self.tmp, ignore_errors=True)
            shutil.rmtree(self.final.parent.parent / WEIGHTS_STAGING_DIR, ignore_errors=True)
        if completed:
            message = (f"checkpoint {self.final.name} is complete, but rank {rank} could not update the run's "
                       f"weights files: {first}; they are the previous ones")
        else:
            message = (f"checkpoint {self.final.name} not written — rank {rank} could not write {first}; the "
                       "partial folder was removed and the previous checkpoint is intact")
        if self.on_error == "warn":
            log.warning("%s; going on (train.checkpoint_errors: warn)", message)
            return completed
        raise CheckpointWriteError(f"{message} — free space, then --resume auto (or set "
                                   "train.checkpoint_errors=warn to go on without such checkpoints)")
