"""Forward+backward time and peak memory of ONE timm Eva block per attention backend.

`python scripts/bench/bench_attention.py [--width 192 --heads 3 --batch 8 --tokens 196 576 1024]` prints one
JSON line: device, dtype, thread count and, per (patch tokens, backend), the median ms of a fwd+bwd step
and the peak memory (CUDA: `torch.cuda.max_memory_allocated` above the inputs; CPU: null). Backends:
sdpa and math everywhere, xformers where its CUDA kernels run (else `skipped` says why).
The block is eva02_tiny's (SwiGLU MLP, RoPE, cls token) at the given width/heads.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from typing import Optional

import timm
import torch

from common.vision.attention import set_attention_backend, xformers_unavailable_reason

PATCH = 14


def make_block(width: int, heads: int, tokens: int, device: torch.device, dtype: torch.dtype):
    """eva02_tiny's first block at `width`/`heads` and its RoPE for a sqrt(tokens)² grid (+1 cls)."""
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise ValueError(f"--tokens {tokens} is not a square grid of patches (e.g. 196, 576, 1024)")
    model = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=grid * PATCH, depth=1,
                              embed_dim=width, num_heads=heads, num_classes=0)
    rope = model.rope.get_embed().to(device, dtype)  # [tokens, 2 * head_dim]
    return model.blocks[0].to(device, dtype), rope


def time_step(block, rope, x: torch.Tensor, repeats: int) -> tuple[float, Optional[float]]:
    """Median ms of fwd+bwd over `repeats` (after 2 warm-ups) and peak MiB above the inputs (CUDA)."""
    cuda = x.is_cuda
    times = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        xi = x.detach().requires_grad_()
        block(xi, rope=rope).float().square().mean().backward()
        block.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(1e3 * (time.perf_counter() - start))
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else None
    return statistics.median(times), None if peak is None else round(peak, 1)


def backends(device: torch.device) -> tuple[list[str], dict[str, str]]:
    """Backends to time here, and why any is skipped."""
    reason = "xformers memory_efficient_attention needs CUDA tensors" if device.type != "cuda" else xformers_unavailable_reason()
    return (["sdpa", "math"], {"xformers": reason}) if reason else (["sdpa", "math", "xformers"], {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, nargs="+", default=[196, 576, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    names, skipped = backends(device)
    results = []
    for tokens in args.tokens:
        block, rope = make_block(args.width, args.heads, tokens, device, dtype)
        x = torch.randn(args.batch, tokens + 1, args.width, device=device, dtype=dtype)
        for name in names:
            set_attention_backend(block, name)
            ms, peak = time_step(block, rope, x, args.repeats)
            results.append({"tokens": tokens, "backend": name, "ms_fwd_bwd": round(ms, 2), "peak_mib": peak})
    print(json.dumps({
        "bench": "attention_block_fwd_bwd", "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(), "dtype": str(dtype)[6:],
        "width": args.width, "heads": args.heads, "batch": args.batch, "torch": torch.__version__,
        "timm": timm.__version__, "results": results, "skipped": skipped}), flush=True)


if __name__ == "__main__":
    main()
