"""Export a stage-2 run (or one of its checkpoints) to a folder stock open_clip loads, with its model card:

    python scripts/export_open_clip.py RUN_DIR OUT_DIR [--hub-id ORG/NAME] [--license ID]
    python scripts/export_open_clip.py --relocate OUT_DIR [--hub-id ORG/NAME]

then `open_clip.create_model_and_transforms("local-dir:OUT_DIR")` and `open_clip.get_tokenizer("local-dir:OUT_DIR")`
(or "hf-hub:ORG/NAME" once the folder exported with --hub-id is uploaded there). A folder whose trunk has no
registered timm name at its image size, or that has a Hugging Face text tower, names their config by
absolute path: after copying or moving it, `--relocate NEW_PLACE` points it at the new place."""
from __future__ import annotations

import argparse
import sys

from common.errors import NotARunError
from common.export import export_open_clip, relocate


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="stage-2 run folder, or one of its checkpoints/step_* folders")
    parser.add_argument("out_dir", nargs="?", help="the folder to write")
    parser.add_argument("--relocate", metavar="OUT_DIR", help="point a copied/moved export at where it is now")
    parser.add_argument("--hub-id", help="hub repo ORG/NAME the folder is for: load it with hf-hub:ORG/NAME")
    parser.add_argument("--license", default="mit", help="license id for the model card (default: mit)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.relocate:
            if args.run_dir:
                raise ValueError("--relocate takes only the export folder: drop RUN_DIR/OUT_DIR")
            name = relocate(args.relocate, args.hub_id)
            print(f"relocated: its towers are now named '{name}'" if name else
                  f"nothing to relocate: '{args.relocate}' names no tower by path and loads from anywhere")
            return 0
        if not args.out_dir:
            raise ValueError("give RUN_DIR and OUT_DIR (or --relocate OUT_DIR)")
        out = export_open_clip(args.run_dir, args.out_dir, args.hub_id, args.license)
    except (NotARunError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    where = f"hf-hub:{args.hub_id}' once uploaded" if args.hub_id else f"local-dir:{out}'"
    print(f"exported to {out}: load with open_clip.create_model_and_transforms('{where}; model card: {out}/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
