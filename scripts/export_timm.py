"""Export the vision trunk of a stage-1 or stage-2 run as a timm checkpoint:
`python scripts/export_timm.py RUN_DIR OUT_FILE`, then
`timm.create_model(NAME, pretrained=False, checkpoint_path=OUT_FILE, img_size=SIZE)` (NAME/SIZE printed)."""
from __future__ import annotations

import argparse
import json
import sys

from common.errors import NotARunError
from common.export import export_timm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", help="stage-1 or stage-2 run folder, checkpoint folder, or weights file")
    parser.add_argument("out_file", help="output .safetensors file")
    args = parser.parse_args(argv)
    try:
        info = export_timm(args.run_dir, args.out_file)
    except (NotARunError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
