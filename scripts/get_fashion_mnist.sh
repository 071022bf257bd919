#!/usr/bin/env bash
# Make sure the Fashion-MNIST idx files are on this machine, then print the folder that holds them:
# already there → nothing to do; as root with apt → `apt-get install dataset-fashion-mnist`;
# otherwise → download the four files from the official mirror into ~/.cache/evaclip/fashion-mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
locate() { "$PY" -c "from common.datasets.fashion_mnist import locate_fashion_mnist; print(locate_fashion_mnist())" 2>/dev/null; }
if locate; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[fashion-mnist] apt-get install -y dataset-fashion-mnist" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y dataset-fashion-mnist >/dev/null 2>&1 || { apt-get update >/dev/null 2>&1 && \
    apt-get install -y dataset-fashion-mnist >/dev/null 2>&1; } || echo "[fashion-mnist] apt-get failed" >&2
  if locate; then exit 0; fi
fi
echo "[fashion-mnist] downloading from the official mirror" >&2
"$PY" - <<'PY'
import shutil, urllib.request
from common.datasets.fashion_mnist import CACHE_DIR, FILES
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
CACHE_DIR.mkdir(parents=True, exist_ok=True)
for name in [n for pair in FILES.values() for n in pair]:
    target = CACHE_DIR / name
    if not target.is_file():
        part = target.with_suffix(".part")
        with urllib.request.urlopen(URL + name, timeout=60) as response, open(part, "wb") as out:
            shutil.copyfileobj(response, out)
        part.replace(target)
PY
"$PY" -c "from common.datasets.fashion_mnist import locate_fashion_mnist; print(locate_fashion_mnist())"
