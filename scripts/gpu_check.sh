#!/usr/bin/env bash
# GPU checks on ONE H100/H200 in about 10 minutes; installs nothing (run scripts/setup_venv.sh [--gpu] first).
#   1. attention benchmark: sdpa vs math vs xformers, bf16, an EVA-02 base block at 196/576/1024 tokens
#   2. bf16 stage-2 step of eva02_base_patch16_clip_224 + CLIP-base text at batch 256: evaclip eager and
#      compiled (train.compile=$GPU_CHECK_COMPILE, default blocks) vs open_clip eager and compiled, the
#      compile warm-up, MFU against the bf16 GEMM peak measured in the same run, and the stage-1 step
#      (student + frozen teacher) compiled vs eager (scripts/bench/bench_train_step.py)
#   3. the data pipeline at 224 px from JPEG bytes: images/s per loader worker (1, 8, 15 workers on 16
#      cores), the workers the compiled step needs, and nvjpeg decoding on the GPU (scripts/bench/bench_data.py)
#   4. a compiled ZeRO-2 single-GPU stage-2 run (5 steps, torchrun, 1 process)
#   4b. contrastive accumulation K = 1, 2, 4 at an equal contrastive batch of 256: peak memory and images/s
#      (scripts/bench/bench_contrastive_accum.py, the gpu_base model, bf16)
#   5. the export test, the CUDA-only attention tests and the no-host-sync test on the GPU (pytest): a test
#      that skips there (no CUDA, xformers missing or without kernels) fails the step — a skipped GPU test
#      is not a pass
# Writes runs/gpu_check/summary.json (every step's status, seconds and JSON result). On a machine without
# CUDA it runs the preflight (venv, imports, data) and prints a SKIP line naming why, exit status 0.
#   scripts/gpu_check.sh --pytest-only [PYTEST ARGS]   step 5 alone (any machine; default: its selection)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${GPU_CHECK_OUT:-runs/gpu_check}
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "gpu_check: no .venv here — run scripts/setup_venv.sh [--gpu] first (the only step that installs)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_NO_INDEX=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
rm -rf "$OUT" && mkdir -p "$OUT"
COMPILE=${GPU_CHECK_COMPILE:-blocks}
GPU_TESTS=(tests/common/export/test_open_clip_folder.py tests/common/export/test_timm_trunk.py tests/common/vision/test_attention.py
           tests/common/train/test_engine.py -k "reloads or cuda")

step() {  # step NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, record status + seconds
  local name=$1 limit=$2 start rc
  shift 2
  echo "== $name (limit ${limit}s): $*"
  start=$(date +%s.%N)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  printf '{"step": "%s", "rc": %d, "seconds": %.1f}\n' "$name" "$rc" "$(echo "$(date +%s.%N) - $start" | bc)" \
    >> "$OUT/steps.jsonl"
  [ "$rc" -eq 0 ] && echo "   ok" || { echo "   FAILED (rc $rc), last lines:"; tail -n 5 "$OUT/$name.log"; }
}

gpu_tests() {  # step 4: pytest on the GPU, failing (rc 3) when any selected test skips
  EVACLIP_TEST_DEVICE=cuda EVACLIP_TEST_SHARDS=data/gpu_check step gpu_tests 240 "$PY" - "$@" <<'PY'
import sys
import pytest

class Skips:  # a pytest plugin: every test that reports skipped, with its reason
    def __init__(self):
        self.found = []

    def pytest_runtest_logreport(self, report):
        if report.skipped:
            why = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            self.found.append(f"{report.nodeid}: {why}")

skips = Skips()
rc = int(pytest.main(["-q", "-p", "no:cacheprovider", "-rs", *sys.argv[1:]], plugins=[skips]))
if rc == 0 and skips.found:
    print(f"gpu_tests: {len(skips.found)} test(s) skipped, so they did not run on the GPU:", *skips.found,
          sep="\n  ")
    rc = 3
sys.exit(rc)
PY
}

summarize() {  # summary.json from steps.jsonl (+ each step's last JSON line); exit status 1 if a step failed
  "$PY" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
for s in steps:  # a step's result: the last JSON line it printed
    lines = [l for l in (out / f"{s['step']}.log").read_text().splitlines() if l.startswith("{")]
    if lines:
        s["result"] = json.loads(lines[-1])
zero2 = out / "zero2" / "metrics.jsonl"
if zero2.is_file():
    losses = [r for r in map(json.loads, zero2.read_text().splitlines()) if "loss" in r]
    next(s for s in steps if s["step"] == "zero2")["result"] = {"losses": [r["loss"] for r in losses]}
summary = {"status": "passed" if all(s["rc"] == 0 for s in steps) else "failed", "steps": steps}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary))
sys.exit(0 if summary["status"] == "passed" else 1)
PY
}

if [ "${1:-}" = "--pytest-only" ]; then
  shift
  if [ "$#" -eq 0 ]; then set -- "${GPU_TESTS[@]}"; fi
  gpu_tests "$@"
  summarize
  exit
fi

# ---- preflight: runs everywhere ------------------------------------------------------------------
step preflight 120 "$PY" - <<'PY'
import json
import torch, timm, open_clip, accelerate, deepspeed  # noqa: F401  (all must import offline)
from common.vision.attention import xformers_unavailable_reason
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
                  "open_clip": open_clip.__version__, "deepspeed": deepspeed.__version__,
                  "cuda_available": torch.cuda.is_available(),
                  "xformers": xformers_unavailable_reason() or "usable"}))
PY
if [ ! -f data/gpu_check/classnames.txt ]; then  # 2 560 small images: Fashion-MNIST if installed, else synthetic
  if [ -d /usr/share/datasets/fashion-mnist ]; then
    step data 300 "$PY" scripts/make_shards.py --source fashion-mnist --out data/gpu_check \
      --max-train 2048 --max-test 512 --samples-per-shard 512
  else
    step images 60 "$PY" - "$OUT/images" <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for c in range(10):  # 10 classes of noisy colour fields, 256 images each
    folder = Path(sys.argv[1]) / f"class_{c}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(256):
        Image.fromarray((rng.random((32, 32, 3)) * 64 + c * 19).astype(np.uint8)).save(folder / f"{i}.png")
PY
    step data 300 "$PY" scripts/make_shards.py --source "folder:$OUT/images" --out data/gpu_check \
      --samples-per-shard 512
  fi
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  reason="torch.cuda.is_available() is False on this machine: the GPU checks need one CUDA device"
  "$PY" -c "import json, sys; print(json.dumps({'status': 'skipped', 'reason': sys.argv[1],
    'steps': [json.loads(l) for l in open(sys.argv[2])]}))" "$reason" "$OUT/steps.jsonl" > "$OUT/summary.json"
  if grep -q '"rc": [1-9]' "$OUT/steps.jsonl"; then
    echo "gpu_check: preflight FAILED (see $OUT/*.log), and no CUDA device: $reason" >&2
    exit 1
  fi
  echo "SKIP: $reason (preflight passed; see $OUT/summary.json)"
  exit 0
fi

# ---- on the GPU ------------------------------------------------------------------------------------
step attention 120 "$PY" scripts/bench/bench_attention.py --device cuda --dtype bfloat16 --width 768 --heads 12 --batch 32
step train_step 420 "$PY" scripts/bench/bench_train_step.py --config configs/stage2/gpu_base.yaml --device cuda \
  --precision bf16 --batch 256 --steps 10 --compile "$COMPILE"
step data_pipeline 240 "$PY" scripts/bench/bench_data.py --image-size 224 --workers 1 8 15 --batches 20
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
step zero2 240 "$PY" -m torch.distributed.run --nproc_per_node 1 --master_port "$PORT" -m stage2_contrastive.train \
  --config configs/stage2/gpu_base.yaml train.deepspeed=configs/deepspeed/zero2.json train.steps=5 \
  train.log_every=1 "train.compile=$COMPILE" "train.output_dir=$OUT/zero2"
step contrastive_accum 180 "$PY" scripts/bench/bench_contrastive_accum.py --config configs/stage2/gpu_base.yaml \
  --device cuda --precision bf16 --batch 256 --rounds 1 --steps 3 --shards data/gpu_check
gpu_tests "${GPU_TESTS[@]}"
summarize
