"""`train.remote_dir`: a copy of the run on any fsspec URL (s3://, gs://, hf://, file://, memory://, …).

After each checkpoint is complete on local disk (atomic write, `common.train.checkpoint`), the main process
copies it to REMOTE/checkpoints/step_X/ — every file first, `engine_state.json` (the completion marker)
last, so a remote folder without the marker is never restored from — then REMOTE/metrics.jsonl and
config.yaml, and prunes remote checkpoints beyond `train.keep_last`. `--resume auto` on a run folder
without a complete checkpoint (a job restarted on a fresh machine) first downloads the newest complete
remote checkpoint and the metrics, then resumes as from a local one. Files: `common.artifacts`.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import fsspec

from common.artifacts import CHECKPOINTS_DIR, CONFIG_FILE, ENGINE_STATE_FILE, METRICS_FILE, complete_checkpoints

log = logging.getLogger("evaclip")
RUN_FILES = (METRICS_FILE, CONFIG_FILE)  # the run's top-level files synced with each checkpoint


class RemoteRun:
    """The remote copy of one run folder at `url`."""

    def __init__(self, url: str):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url)

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def _put(self, local: Path, remote: str) -> None:
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)
        self.fs.put_file(str(local), remote)

    def push_checkpoint(self, run_dir: Path, checkpoint: Path, keep_last: int) -> None:
        """Copy a complete local checkpoint (marker last) and the run's metrics/config; prune old ones."""
        dest = self._path(CHECKPOINTS_DIR, checkpoint.name)
        files = sorted(p for p in checkpoint.rglob("*") if p.is_file())
        for file in sorted(files, key=lambda p: p.name == ENGINE_STATE_FILE):  # the marker last
            self._put(file, f"{dest}/{file.relative_to(checkpoint).as_posix()}")
        for name in RUN_FILES:
            if (run_dir / name).is_file():
                self._put(run_dir / name, self._path(name))
        for old in self.complete_checkpoints()[:-keep_last]:
            self.fs.rm(self._path(CHECKPOINTS_DIR, old), recursive=True)
        log.info("synced %s to %s", checkpoint.name, self.url)

    def complete_checkpoints(self) -> list[str]:
        """Names (step_XXXXXXXX) of the remote checkpoints holding the marker, oldest first."""
        if not self.fs.exists(self._path(CHECKPOINTS_DIR)):
            return []
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self._path(CHECKPOINTS_DIR), detail=False)]
        return sorted(n for n in names if n.startswith("step_") and not n.endswith(".tmp")
                      and self.fs.exists(self._path(CHECKPOINTS_DIR, n, ENGINE_STATE_FILE)))

    def pull_latest(self, run_dir: Path) -> Path | None:
        """Download the newest complete remote checkpoint (to a temp folder, renamed when complete) and
        the run's metrics/config into `run_dir`; None when the remote holds no complete checkpoint."""
        found = self.complete_checkpoints()
        if not found:
            return None
        source = self._path(CHECKPOINTS_DIR, found[-1])
        final = Path(run_dir) / CHECKPOINTS_DIR / found[-1]
        tmp = final.with_name(final.name + ".download")
        shutil.rmtree(tmp, ignore_errors=True)
        for remote_file in self.fs.find(source):
            local = tmp / remote_file[len(source):].lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            self.fs.get_file(remote_file, str(local))
        tmp.rename(final)
        for name in RUN_FILES:
            if self.fs.exists(self._path(name)):
                self.fs.get_file(self._path(name), str(Path(run_dir) / name))
        log.info("restored %s from %s", final.name, self.url)
        return final


def restore_if_empty(url: str, run_dir: Path) -> Path | None:
    """`--resume auto` with `train.remote_dir`: the newest remote checkpoint, downloaded, when `run_dir`
    holds no complete checkpoint of its own (main process only; the caller waits for the others)."""
    if complete_checkpoints(run_dir):
        return None
    return RemoteRun(url).pull_latest(run_dir)
