"""Just enough CUDA for the TensorRT runner, through cuda-bindings' runtime API (no torch).

`cuda.bindings.runtime` calls return a tuple whose first element is the error code; `_call`
unwraps it. Imported only by the TensorRT runner. The bindings carry no type information: the
type check (`.ci/typecheck`) generates stubs from the installed wheel, so a misspelled function or
enum member fails it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
from cuda.bindings import runtime as cudart

__all__ = ["DeviceBuffer", "PinnedBuffer", "Stream", "EventTimer", "memory_in_use"]


def _call(result: tuple[Any, ...]) -> Any:
    """The value(s) after the error code of a cuda.bindings call; RuntimeError where the code is not success."""
    err, *values = result
    if err != cudart.cudaError_t.cudaSuccess:
        _, text = cudart.cudaGetErrorString(err)
        raise RuntimeError(f"CUDA error {err}: {text.decode(errors='replace') if isinstance(text, bytes) else text}")
    return values[0] if len(values) == 1 else values or None


def memory_in_use() -> int:
    """Bytes of device memory in use on the current device (all processes)."""
    free, total = _call(cudart.cudaMemGetInfo())
    return int(total) - int(free)


class Stream:
    def __init__(self) -> None:
        self.handle: Any = _call(cudart.cudaStreamCreate())  # a cudaStream_t; int(handle) is the raw pointer

    def synchronize(self) -> None:
        _call(cudart.cudaStreamSynchronize(self.handle))

    def destroy(self) -> None:
        if self.handle is not None:
            _call(cudart.cudaStreamDestroy(self.handle))
            self.handle = None


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(_call(cudart.cudaMalloc(max(nbytes, 1))))

    def copy_from_host(self, array: np.ndarray, stream: Stream) -> None:
        _call(cudart.cudaMemcpyAsync(self.ptr, array.ctypes.data, array.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.handle))

    def copy_to_host(self, array: np.ndarray, stream: Stream) -> None:
        _call(cudart.cudaMemcpyAsync(array.ctypes.data, self.ptr, array.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.handle))

    def free(self) -> None:
        if self.ptr:
            _call(cudart.cudaFree(self.ptr))
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory as a numpy array of `shape` and `dtype`, so async copies really overlap."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        self.ptr = int(_call(cudart.cudaMallocHost(max(nbytes, 1))))
        raw = (ctypes.c_byte * max(nbytes, 1)).from_address(self.ptr)
        self.array: np.ndarray = np.frombuffer(memoryview(raw).cast("B"), dtype=np.uint8, count=nbytes).view(dtype).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = np.empty(0, np.uint8)  # no view of the freed memory stays reachable
            _call(cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class EventTimer:
    """GPU time between entering and leaving the block, measured by CUDA events on `stream`."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.start = _call(cudart.cudaEventCreate())
        self.end = _call(cudart.cudaEventCreate())

    def __enter__(self) -> "EventTimer":
        _call(cudart.cudaEventRecord(self.start, self.stream.handle))
        return self

    def __exit__(self, *exc: object) -> None:
        _call(cudart.cudaEventRecord(self.end, self.stream.handle))

    def elapsed_ms(self) -> float:
        _call(cudart.cudaEventSynchronize(self.end))
        ms = float(_call(cudart.cudaEventElapsedTime(self.start, self.end)))
        _call(cudart.cudaEventDestroy(self.start))
        _call(cudart.cudaEventDestroy(self.end))
        return ms
