"""Reading an offline wandb run's own file (`RUN/wandb/offline-run-*/run-ID.wandb`) back, to compare with
metrics.jsonl: wandb's record log (a LevelDB-style log: a 7-byte header, then 32 KiB blocks of records,
each a 7-byte header — checksum, length, type — and a chunk of one serialized `wandb_internal_pb2.Record`)."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[bytes]:
    """The serialized records of one .wandb file, chunks joined."""
    data, pos, pending = path.read_bytes(), HEADER, b""
    assert data[:4] == b":W&B", f"{path} is not a wandb run file"
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            yield pending


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline wandb runs of a run folder, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def history(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(run id, the logged rows: {key: value, "_step": step}) of one offline run file."""
    from wandb.proto import wandb_internal_pb2 as pb
    run_id, rows = "", []
    for payload in records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return run_id, rows
