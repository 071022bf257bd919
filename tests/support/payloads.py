"""Files that would run code when unpickled: the tests hand them to evaclip wherever it loads a file from
elsewhere and check that it refuses them (and that the code never ran)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path


class Payload:
    """Unpickling this creates the folder `marker`: a file holding it must never be unpickled."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def poison(path: Path, marker: Path) -> Path:
    """Overwrite `path` with a pickle whose loading would create the folder `marker`."""
    path.write_bytes(pickle.dumps({"weight": Payload(marker)}))
    return path
