"""The scripts import their siblings by bare name (`from recipe_runner import …`), as they do when run, where
scripts/ is on sys.path; the tests import them as `scripts.<name>`, so scripts/ goes on sys.path here too."""
from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parents[2] / "scripts")
if SCRIPTS not in sys.path:
    sys.path.append(SCRIPTS)
