#!/usr/bin/env bash
# The two-stage recipe on your own data (README, "Your own data"): set up .venv if needed, then
#   shards → stage 1's image pool + stage 2's caption set → teacher → stage 1 (images only) →
#   stage 2 --init + scratch controls (the caption set) → export → zero-shot on the held-out split → report.
#
#   scripts/recipe_own_data.sh CAPTIONS [--pool IMAGES] [scripts/recipe.py options]
#     CAPTIONS   what stage 2 trains on: a folder CAPTIONS/<class name>/<image> (captions from the class
#                names; zero-shot on the held-out split), a CSV of rows "image path, caption" (no class names:
#                no zero-shot step), or a folder of webdataset shards (*.tar, e.g. img2dataset's output)
#     --pool IMAGES  a folder of images WITHOUT captions (any layout): stage 1's image pool; default: the
#                images of CAPTIONS' training split
#   e.g. scripts/recipe_own_data.sh data/digits_images --teacher reference --captions 200 600 all
#        scripts/recipe_own_data.sh pairs.csv --pool /data/unlabelled_photos --teacher local-dir:runs/my_clip_export
set -euo pipefail
usage="usage: scripts/recipe_own_data.sh CAPTIONS [--pool IMAGES] [scripts/recipe.py options: --out --data --teacher --captions --seeds ...]"
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then echo "$usage" >&2; exit 2; fi
input=$1; shift
absolute() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }
if [ -d "$input" ] && compgen -G "$input/*.tar" >/dev/null; then source="shards:$(absolute "$input")"
elif [ -d "$input" ]; then source="folder:$(absolute "$input")"
elif [ -f "$input" ]; then source="csv:$(absolute "$input")"
else echo "error: '$input' is neither a folder nor a CSV file" >&2; exit 2
fi
pool=()
if [ "${1:-}" = "--pool" ]; then
  if [ $# -lt 2 ] || [ ! -d "$2" ]; then echo "error: --pool needs a folder of images ('${2:-}' is none)" >&2; exit 2; fi
  pool=(--pool "images:$(absolute "$2")"); shift 2
fi
name=$(basename "${input%/}"); name=${name%.*}
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python scripts/recipe.py --source "$source" "${pool[@]}" --out "runs/own_$name" --data "data/own_$name" "$@"
