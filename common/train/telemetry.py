"""What a run's loss records say about its speed: samples/s (the run's and per device), the step time split
into data wait (time blocked on the loader) and compute, and MFU.

Everything is measured on the host between two log records: a window ends at the log step's own read of
the step outcomes (the one host-device sync of a window), so no sync is added. Data wait is the time spent
in `next()` on the training stream; compute is the rest of the window's wall time.

MFU = FLOPs per sample × samples/s per device ÷ the device's peak FLOP/s. FLOPs per sample are counted
once per process start with torch's own counter (`torch.utils.flop_counter.FlopCounterMode`) on a pass of
their own over the first micro-batch: its loss, forward and backward (a frozen teacher's forward too;
matmuls, convolutions and attention), divided by its samples — the model's FLOPs, without the re-forward
of contrastive accumulation or gradient checkpointing. The peak is `train.peak_tflops`, else the data-sheet
dense peak of a known GPU at the run's precision (`PEAK_TFLOPS`); on a CPU or an unknown GPU it is not
known and MFU is not reported.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch

log = logging.getLogger("evaclip")

# dense peak TFLOP/s per device from NVIDIA's data sheets: (bf16/fp16 tensor cores, TF32, plain FP32); the
# most specific name first ("H100 PCIe" before "H100", "L40S" before "L4")
PEAK_TFLOPS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("H200", (989.0, 494.7, 66.9)),
    ("H100 PCIe", (756.5, 378.0, 51.2)),
    ("H100", (989.0, 494.7, 66.9)),
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.0, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
)
DATA_WAIT_MIN_STEPS = 10  # the data-wait warning judges windows of at least this many steps


def peak_flops(device: torch.device, precision: str, override_tflops: float) -> tuple[Optional[float], str]:
    """(peak FLOP/s of one device, where the number comes from); (None, why) when it is not known."""
    if override_tflops:
        return override_tflops * 1e12, "train.peak_tflops"
    if device.type != "cuda":
        return None, f"not known on {device.type} (set train.peak_tflops to report MFU)"
    name = torch.cuda.get_device_name(device)
    for key, (half, tf32, fp32) in PEAK_TFLOPS:
        if key in name:
            if precision in ("bf16", "fp16"):
                return half * 1e12, f"{name}, {precision} data-sheet peak"
            tf32_on = torch.backends.cuda.matmul.allow_tf32
            return (tf32 if tf32_on else fp32) * 1e12, f"{name}, {'TF32' if tf32_on else 'FP32'} data-sheet peak"
    return None, f"not known for '{name}' (set train.peak_tflops to report MFU)"


class GlobalOnly:
    """Stands in for `FlopCounterMode`'s module tracker: every FLOP is counted under "Global" only. The
    tracker's module hooks are not installed (its multi-grad hooks refuse `torch.autograd.grad`)."""
    parents = frozenset({"Global"})

    def __enter__(self) -> "GlobalOnly":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None


@dataclass
class Telemetry:
    """The speed of a run, window by window (a window: the steps between two log records)."""
    samples_per_step: int  # all ranks
    world_size: int
    peak_flops: Optional[float]  # per device; None: MFU not reported
    warn_share: float  # data wait above this share of the step time: one warning (0: never)
    num_workers: Optional[int]  # data.num_workers, named in the warning
    detailed: bool = True  # train.telemetry: data wait, FLOPs and MFU (else samples/s only)
    flops_per_sample: Optional[float] = None  # counted over the first step of this process
    data_wait: float = 0.0  # seconds blocked on the loader in this window
    started: float = field(default_factory=time.perf_counter)
    steps: int = 0
    warned: bool = False
    first_window: bool = True  # loader start-up and the first step's FLOP count: not judged
    judged_wait: float = 0.0  # the data-wait warning's running window (≥ DATA_WAIT_MIN_STEPS steps)
    judged_wall: float = 0.0
    judged_steps: int = 0

    def counts_flops(self) -> bool:
        """Whether the next step is the one whose FLOPs are counted (the first of this process)."""
        return self.detailed and self.flops_per_sample is None

    @contextmanager
    def counting_flops(self, samples: int) -> Iterator[None]:
        """Count the FLOPs of what runs inside (the forward and backward of `samples` samples)."""
        from torch.utils.flop_counter import FlopCounterMode
        counter = FlopCounterMode(display=False)
        counter.mod_tracker = GlobalOnly()  # totals only: no module hooks (they break autograd.grad)
        with counter:
            yield
        self.flops_per_sample = counter.get_total_flops() / samples

    def next_batch(self, batches: Iterator[dict]) -> dict:
        """`next(batches)`, its wait added to the window's data wait."""
        if not self.detailed:
            return next(batches)
        start = time.perf_counter()
        batch = next(batches)
        self.data_wait += time.perf_counter() - start
        return batch

    def step_done(self) -> None:
        self.steps += 1

    def restart(self) -> None:
        """Start a new window now (after a log record, an evaluation or a checkpoint: not step time)."""
        self.data_wait, self.steps, self.started = 0.0, 0, time.perf_counter()

    def window(self) -> dict[str, Any]:
        """The fields of the window's loss record, then a new window. Warns once when data wait dominates."""
        wall = max(time.perf_counter() - self.started, 1e-9)
        steps = max(self.steps, 1)
        samples_per_s = self.steps * self.samples_per_step / wall
        per_device = samples_per_s / self.world_size
        fields: dict[str, Any] = {"samples_per_s": samples_per_s, "samples_per_s_per_device": per_device}
        if self.detailed:
            fields.update({"step_time_s": wall / steps, "data_wait_s": self.data_wait / steps,
                           "compute_s": max(wall - self.data_wait, 0.0) / steps,
                           "data_wait_share": self.data_wait / wall})
            if self.peak_flops is not None and self.flops_per_sample is not None:
                fields["mfu"] = self.flops_per_sample * per_device / self.peak_flops
            self._judge(wall)
        self.restart()
        return fields

    def start_fields(self, peak_source: str) -> dict[str, Any]:
        """What the start record says about MFU: the peak used (FLOP/s per device) and where it comes from."""
        return {"peak_flops": self.peak_flops, "peak_flops_source": peak_source} if self.detailed else {}

    def _judge(self, wall: float) -> None:
        if self.first_window or self.warned or not self.warn_share:
            self.first_window = False
            return
        self.judged_wait, self.judged_wall = self.judged_wait + self.data_wait, self.judged_wall + wall
        self.judged_steps += self.steps
        if self.judged_steps < DATA_WAIT_MIN_STEPS:
            return
        share = self.judged_wait / self.judged_wall
        if share > self.warn_share:
            self.warned = True
            workers = f"now {self.num_workers}" if self.num_workers is not None else "the loader's workers"
            log.warning("data wait is %.0f%% of the step time over the last %d steps (above "
                        "train.data_wait_warn=%.0f%%): the loader does not keep up — raise data.num_workers "
                        "(%s), lower data.image_size or decode cost, or copy the shards off a network mount",
                        100 * share, self.judged_steps, 100 * self.warn_share, workers)
        self.judged_wait = self.judged_wall = 0.0
        self.judged_steps = 0


def progress_fields(record: dict[str, Any]) -> dict[str, str]:
    """The progress bar's postfix: loss, samples/s, data-wait share and MFU when the record has them."""
    fields = {"loss": f"{record['loss']:.4f}", "samples/s": f"{record['samples_per_s']:.1f}"}
    if "data_wait_share" in record:
        fields["data_wait"] = f"{100 * record['data_wait_share']:.0f}%"
    if "mfu" in record:
        fields["mfu"] = f"{record['mfu']:.2f}"
    return fields
