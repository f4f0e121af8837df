"""Memory probes for ssp-bench, ssp-run's summary and the benchmarks: this process's resident memory (now and at
its peak; Linux /proc) and the GPU's memory in use (NVML)."""

from __future__ import annotations

import os
import resource

__all__ = ["GpuMemory", "peak_rss_mb", "rss_mb", "reset_peak_rss"]


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
