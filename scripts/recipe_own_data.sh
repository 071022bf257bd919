#!/usr/bin/env bash
# The two-stage recipe on your own images (README, "Your own data"): set up .venv if needed, then
#   shards → teacher (stage 2 from scratch on your data, or --teacher local-dir:PATH) → stage 1 →
#   stage 2 --init + scratch controls → export → zero-shot of the export on the held-out split → report.
#
#   scripts/recipe_own_data.sh FOLDER_OR_CSV [scripts/recipe.py options]
#     FOLDER_OR_CSV   a folder FOLDER/<class name>/<image> (zero-shot on the held-out split), or a CSV of
#                     rows "image path, caption" (no class names: no zero-shot step)
#   e.g. scripts/recipe_own_data.sh data/digits_images --out runs/digits --data data/digits
#        scripts/recipe_own_data.sh photos/ --teacher local-dir:runs/my_teacher_export --seeds 0
set -euo pipefail
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/recipe_own_data.sh FOLDER_OR_CSV [scripts/recipe.py options: --out --data --teacher --seeds ...]" >&2
  exit 2
fi
input=$1; shift
if [ -d "$input" ]; then source="folder:$(cd "$input" && pwd)"
elif [ -f "$input" ]; then source="csv:$(cd "$(dirname "$input")" && pwd)/$(basename "$input")"
else echo "error: '$input' is neither a folder nor a CSV file" >&2; exit 2
fi
name=$(basename "${input%/}"); name=${name%.*}
cd "$(dirname "$0")/.."
bash scripts/setup_venv.sh
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python scripts/recipe.py --source "$source" --out "runs/own_$name" --data "data/own_$name" "$@"
