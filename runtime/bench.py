"""The job behind ssp-bench: latency percentiles, throughput and memory by batch size."""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .backends import Runner
from .contract import INPUT, LABELS
from .errors import OptionError
from .segmenter import check_metadata

__all__ = ["BenchRow", "GpuMemory", "benchmark", "time_calls", "environment", "markdown_table", "plot_latency", "peak_rss_mb", "rss_mb", "reset_peak_rss"]


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


class GpuMemory:
    """Peak device memory in use, sampled through NVML where a GPU and nvidia-ml-py exist.

    This process's memory (CUDA context, weights, arenas) where NVML lists the process; where it
    does not (some containers hide PIDs), the whole device's, and `scope` says which.
    """

    def __init__(self) -> None:
        self.handle = None
        self.scope: str | None = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.pynvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # no library, no driver or no device: report None
            self.handle = None
        self.peak = 0

    def current(self) -> int | None:
        """Bytes in use now, or None without NVML."""
        if self.handle is None:
            return None
        try:
            for process in self.pynvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if process.pid == os.getpid() and process.usedGpuMemory:
                    self.scope = "process"
                    return int(process.usedGpuMemory)
        except Exception:  # noqa: BLE001 - NVML builds without per-process accounting
            pass
        self.scope = "device"
        return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)

    def sample(self) -> None:
        used = self.current()
        if used is not None:
            self.peak = max(self.peak, used)

    @property
    def peak_mb(self) -> float | None:
        return None if self.handle is None else self.peak / 2**20


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, which (unlike ru_maxrss) starts afresh at
    exec, so a benchmark started from a bigger process does not report its parent's peak."""
    peak = _status_mb("VmHWM")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if peak is None else peak


def rss_mb() -> float | None:
    """This process's resident memory now (Linux VmRSS), None where /proc is absent."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> bool:
    """Start VmHWM afresh from the current resident size (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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


def environment(runner: Runner) -> dict:
    """Backend, precision, device and versions, for the table's header."""
    info = {
        "model": str(runner.path),
        "backend": runner.backend,
        "device": runner.device,
        "cuda graph": getattr(runner, "cuda_graph", False),
        "precision": runner.metadata.precision if runner.metadata else "unknown",
        "input_size": runner.metadata.input_size if runner.metadata else None,
        "prompts": runner.metadata.num_prompts if runner.metadata else None,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for module in ("onnxruntime", "tensorrt"):
        try:
            version = getattr(__import__(module), "__version__", None)  # a folder of type stubs imports, unversioned
        except ImportError:
            continue
        if version is not None:
            info[module] = version
    return info


def markdown_table(rows: list[BenchRow], info: dict, command: str) -> str:
    lines = [
        f"Command: `{command}`  ",
        "  ".join(f"{k}: {v}" for k, v in info.items()) + "  ",
        "",
        "| batch | p50 ms | p90 ms | p99 ms | images/s | host peak RSS MB | GPU peak MB | timing |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpu = "n/a" if r.gpu_peak_mb is None else f"{r.gpu_peak_mb:.0f} ({r.gpu_memory_scope})"
        lines.append(f"| {r.batch} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.images_per_s:.2f} | "
                     f"{r.host_peak_rss_mb:.0f} | {gpu} | {r.timing} |")
    return "\n".join(lines) + "\n"


def plot_latency(rows: list[BenchRow], info: dict, path) -> None:
    """Latency (p50, with p90-p99 whiskers) and throughput against batch size, as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise OptionError("--plot needs matplotlib (pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r.batch for r in rows]
    fig, (ax_lat, ax_thr) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax_lat.plot(batches, [r.p50_ms for r in rows], "o-", label="p50")
    ax_lat.fill_between(batches, [r.p90_ms for r in rows], [r.p99_ms for r in rows], alpha=0.25, label="p90-p99")
    ax_lat.set_xlabel("batch")
    ax_lat.set_ylabel("ms per call")
    ax_lat.legend()
    ax_thr.plot(batches, [r.images_per_s for r in rows], "s-", color="#dd8452")
    ax_thr.set_xlabel("batch")
    for ax in (ax_lat, ax_thr):
        ax.set_xticks(batches)
    ax_thr.set_ylabel("images / s")
    fig.suptitle(f"{info['backend']} ({info['device']}), {info['precision']}")
    fig.tight_layout()
    from .files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def rows_as_dicts(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]
