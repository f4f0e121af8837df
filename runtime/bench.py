"""The job behind ssp-bench: latency percentiles, throughput and memory by batch size (memory.py probes the
memory, report.py writes the table)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .contract import INPUT, LABELS
from .memory import GpuMemory, peak_rss_mb, reset_peak_rss
from .runner import Runner
from .segmenter import check_metadata

__all__ = ["BenchRow", "benchmark", "time_calls"]


@dataclass
class BenchRow:
    batch: int  # images per call
    p50_ms: float  # median latency of one call
    p90_ms: float
    p99_ms: float
    images_per_s: float  # batch / mean latency
    host_peak_rss_mb: float  # process peak resident memory while this batch size's runner lived (Linux; else so far)
    gpu_peak_mb: float | None  # device memory in use at its highest (NVML), None without a GPU
    timing: str  # "wall" (host clock) or "cuda-events"
    gpu_memory_scope: str | None = None  # "process" (this process, NVML) or "device" (the whole GPU), None without one



def time_calls(call: Callable[[], object], warmup: int, iters: int, gpu_ms: Callable[[], float | None] | None = None,
               after_each: Callable[[], None] | None = None, desc: str | None = None) -> tuple[list[float], str]:
    """The one timing loop of ssp-bench and the benchmarks: `iters` calls of `call` after `warmup` untimed ones.

    A call's time is the GPU time `gpu_ms()` reports for it (CUDA events: the TensorRT runner),
    else the host's wall time around it (a call returns its outputs on the host, so it has
    finished on the device too). `after_each` runs after every timed call, outside the timing.

    Returns:
      (list[float]): ms per call.
      (str): "cuda-events" or "wall".
    """
    for _ in range(warmup):
        call()
    times, timing = [], "wall"
    for _ in tqdm(range(iters), desc=desc, disable=desc is None):
        began = time.perf_counter()
        call()
        wall_ms = (time.perf_counter() - began) * 1e3
        event_ms = gpu_ms() if gpu_ms is not None else None
        times.append(event_ms if event_ms is not None else wall_ms)
        timing = "cuda-events" if event_ms is not None else "wall"
        if after_each is not None:
            after_each()
    return times, timing


def benchmark(open_batch: Callable[[int], Runner], batches: list[int], warmup: int = 3, iters: int = 20,
              outputs: tuple[str, ...] | None = (LABELS,), progress: bool = True, log=None) -> tuple[list[BenchRow], Runner]:
    """Time `iters` calls per batch size on random letterboxed-size uint8 input, after `warmup` calls.

    Each batch size gets its own runner from `open_batch(batch)`, activated before the warm-up and
    deactivated after; GPU memory is this process's peak while that runner lived. A call copies
    `outputs` (None: all) back to the host; ssp-run needs labels. `log` gets each distinct
    provider-fallback note once.

    Returns:
      (list[BenchRow]): one row per batch size.
      (Runner): the last runner (deactivated), for its description.
    """
    rng = np.random.default_rng(0)
    rows = []
    runner = None
    told: set[str] = set()
    for batch in batches:
        gpu = GpuMemory()
        reset_peak_rss()
        with open_batch(batch) as runner:
            size = check_metadata(runner).input_size
            feed = {INPUT: rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)}
            wanted = outputs and list(outputs)
            times, timing = time_calls(lambda: runner.infer(feed, wanted), warmup, iters,
                                       gpu_ms=lambda: getattr(runner, "last_gpu_ms", None), after_each=gpu.sample,
                                       desc=f"batch {batch}" if progress else None)
            for note in runner.notes:  # provider fallbacks, and a CUDA graph that could not be captured
                if note not in told and log is not None:
                    log(note)
                told.add(note)
        times_arr = np.asarray(times)
        rows.append(BenchRow(
            batch=batch,
            p50_ms=float(np.percentile(times_arr, 50)),
            p90_ms=float(np.percentile(times_arr, 90)),
            p99_ms=float(np.percentile(times_arr, 99)),
            images_per_s=batch / (float(times_arr.mean()) / 1e3),
            host_peak_rss_mb=peak_rss_mb(),
            gpu_peak_mb=gpu.peak_mb,
            timing=timing,
            gpu_memory_scope=gpu.scope,
        ))
    return rows, runner

