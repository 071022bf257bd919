"""Export a stage-2 run (or one of its checkpoints) to an open_clip folder:
`python scripts/export_open_clip.py RUN_DIR OUT_DIR`, then
`open_clip.create_model_and_transforms("local-dir:OUT_DIR")` and `open_clip.get_tokenizer("local-dir:OUT_DIR")`."""
from __future__ import annotations

import argparse
import sys

from common.artifacts import NotARunError
from common.export import export_open_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="stage-2 run folder, or one of its checkpoints/step_* folders")
    parser.add_argument("out_dir", help="folder to write open_clip_config.json + open_clip_model.safetensors")
    args = parser.parse_args(argv)
    try:
        out = export_open_clip(args.run_dir, args.out_dir)
    except (NotARunError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported: load with open_clip.create_model_and_transforms('local-dir:{out}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
