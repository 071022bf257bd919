"""Zero-shot top-1/top-5 and retrieval of ANY open_clip model on a labelled webdataset set, with the class
names and templates a run's `eval.zeroshot` item would use (common/data/eval_sets.py):
`python scripts/eval_zeroshot.py --model local-dir:OUT_DIR --data SHARD_DIR`
(or `--model ViT-B-32 --pretrained /path/weights.bin`). Prints one JSON line."""
from __future__ import annotations

import argparse
import json
import sys
import time

import open_clip
import torch

from common.config.sections import ZeroShotSetConfig
from common.data.eval_sets import check_label, resolve_zeroshot_set
from common.data.streams import make_eval_loader
from common.data.templates import caption_of
from common.errors import ConfigError
from stage2_contrastive.zeroshot import evaluate_clip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="local-dir:FOLDER or a built-in open_clip name")
    parser.add_argument("--pretrained", default=None, help="local weights file for a built-in name")
    parser.add_argument("--data", required=True, help="eval shards: folder, brace pattern or comma list")
    parser.add_argument("--classnames", default="", help="class-name file (default: classnames.txt beside --data)")
    parser.add_argument("--templates", default="",
                        help="template set or file (default: zeroshot_classification_templates.txt beside "
                             "--data, else simple)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-samples", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="image-decoding loader processes (0: in-process)")
    args = parser.parse_args(argv)
    try:
        zs = resolve_zeroshot_set(ZeroShotSetConfig("data", args.data, args.classnames, args.templates), 0, "simple")
        model, _, preprocess = open_clip.create_model_and_transforms(args.model, pretrained=args.pretrained)
        tokenizer = open_clip.get_tokenizer(args.model)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()

    def sample(image, meta):
        caption = caption_of(meta, zs.classnames, zs.templates, 0)
        return {"image": preprocess(image), "label": check_label(meta, len(zs.classnames)), "caption": caption,
                "index": meta["index"]}

    start = time.perf_counter()
    batches = make_eval_loader(list(zs.urls), sample, args.batch_size, max_samples=args.max_samples,
                               num_workers=args.workers)
    metrics = evaluate_clip(lambda x: model.encode_image(x, normalize=True),
                            lambda t: model.encode_text(tokenizer(t).to(device), normalize=True),
                            batches, zs.classnames, zs.templates, device)
    metrics.update(model=args.model, data=args.data, seconds=round(time.perf_counter() - start, 1))
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
