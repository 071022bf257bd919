"""Training checkpoints, owned here end to end; the engine calls `CheckpointStore`.

    store.py     CheckpointStore: find the checkpoint to resume (local or remote), load it, save a new one
    resume.py    `--resume` resolution and fallback, the same-schedule rule, the tensors-only scan
    write.py     the write across ranks when writes can fail; seal + rename + rotation; top-level weights
    manifest.py  size and sha256 of every file, recorded at sealing, checked before a resume
    remote.py    the copy on `train.remote_dir` (any fsspec URL) and the restore from it
    universal.py a resume on another number of processes: DeepSpeed's universal checkpoint (ZeRO), RNG seeds

Folder and file names come from the run folder's map (`common.artifacts`).
"""
from common.train.checkpoint.store import CheckpointStore
from common.train.checkpoint.write import CheckpointWriteError

__all__ = ["CheckpointStore", "CheckpointWriteError"]
