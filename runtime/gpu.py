"""The GPU's name, wherever a table header, an engine sidecar or a runner needs it (no torch)."""

from __future__ import annotations

__all__ = ["gpu_name", "UNKNOWN_GPU"]

UNKNOWN_GPU = "unknown"  # what a sidecar records where no GPU name can be read


def gpu_name(index: int = 0) -> str | None:
    """The name of CUDA device `index` (e.g. "NVIDIA H200") by the CUDA runtime, else by NVML; None without either.

    The CUDA runtime first: its index counts only the devices CUDA_VISIBLE_DEVICES leaves, as the
    runners' does; NVML's counts every device of the machine.
    """
    try:
        from cuda.bindings import runtime as cudart

        err, prop = cudart.cudaGetDeviceProperties(index)
        if err == cudart.cudaError_t.cudaSuccess:
            return prop.name.decode(errors="replace").rstrip("\x00")
    except Exception:  # noqa: BLE001 - no bindings, no driver or no device: ask NVML
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001
        pass
    return None
