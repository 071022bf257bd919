"""scikit-learn's bundled handwritten digits (UCI optdigits test set: 1 797 images of 8×8 pixels, 10 classes)
written out as an image folder, the layout a user's own data comes in: `OUT/<class name>/<index>.png`.

The data ship inside the scikit-learn wheel (`sklearn.datasets.load_digits`), so nothing is downloaded.
Pixels 0…16 are scaled to 0…255 (grayscale PNG, 8×8; the training transforms resize them). Class folders
are the digits' English names (`zero` … `nine`), so prompt templates read "a photo of a seven."

    python -m common.datasets.sklearn_digits data/digits_images
    scripts/recipe_own_data.sh data/digits_images
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSNAMES: list[str] = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """images `[1797, 8, 8] uint8` (0…255), labels `[1797] int64`; ImportError names the package to install."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("scikit-learn is not installed — pip install 'evaclip[digits]' (or scikit-learn)") from err
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_digits_folder(out: Path) -> dict[str, int]:
    """Write `out/<class name>/<index:04d>.png` (index = position in scikit-learn's array); returns the
    count per class. Idempotent: existing files are rewritten with the same bytes."""
    images, labels = load_digits_arrays()
    counts: dict[str, int] = {}
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = out / CLASSNAMES[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")
        counts[CLASSNAMES[label]] = counts.get(CLASSNAMES[label], 0) + 1
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="folder to write (OUT/<class name>/<index>.png)")
    counts = write_digits_folder(parser.parse_args(argv).out)
    print(json.dumps({"images": sum(counts.values()), "classes": counts}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
