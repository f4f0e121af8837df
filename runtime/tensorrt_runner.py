"""The TensorRT 10 engine runner: name-based I/O, device buffers sized for the profile's largest batch,
pinned host buffers, one CUDA stream (runtime/cuda.py); no torch.

TensorRT and the CUDA bindings are imported when the runner activates. CI has neither TensorRT nor a
GPU: this module is type-checked against the TensorRT bindings' stubs (`.ci/typecheck`) and its
decisions are tested against fakes of the TensorRT objects (tests/runtime/test_tensorrt_runner.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import ModelError, OptionError
from .gpu import gpu_name
from .runner import Runner, TensorSpec
from .sidecar import check_sidecar, read_sidecar

if TYPE_CHECKING:
    import tensorrt as trt

    from . import cuda

__all__ = ["TensorRTRunner"]


def _dims(dims: "trt.Dims") -> tuple[int, ...]:
    """TensorRT's Dims as a tuple (-1 where dynamic)."""
    return tuple(int(dims[i]) for i in range(len(dims)))


class TensorRTRunner(Runner):
    """A TensorRT 10 engine; GPU time of the last call in `last_gpu_ms`.

    Takes any batch up to the optimisation profile's `max_batch` (one below its `min_batch` padded).
    """

    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.last_gpu_ms: float | None = None
        self.min_batch = 0
        self.max_batch = 0
        self._buffers: dict[str, tuple[cuda.DeviceBuffer, cuda.PinnedBuffer]] = {}
        self._engine: trt.ICudaEngine | None = None
        self._context: trt.IExecutionContext | None = None
        self._stream: cuda.Stream | None = None

    def activate(self) -> None:
        """Load the engine after checking its sidecar; activating again starts from nothing."""
        self.deactivate()
        try:
            import tensorrt as trt
        except ImportError:
            raise ModelError(f"{self.path}: TensorRT engines need the tensorrt package (pip install 'ssprompt[tensorrt]')") from None
        from . import cuda

        if not self.path.is_file():
            raise ModelError(f"{self.path}: engine not found")
        meta = read_sidecar(self.path)
        assert meta.engine is not None  # read_sidecar refuses a sidecar without engine facts
        check_sidecar(self.path, meta.engine, trt.__version__, gpu_name())
        self.metadata = meta

        logger = trt.Logger(trt.Logger.WARNING)
        engine = trt.Runtime(logger).deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise ModelError(f"{self.path}: TensorRT cannot deserialize it (corrupt, or another TensorRT version)")
        context = engine.create_execution_context()
        if context is None:
            raise ModelError(f"{self.path}: TensorRT cannot create an execution context (out of GPU memory?)")
        self._engine, self._context = engine, context
        self._stream = cuda.Stream()
        self.device = gpu_name() or "GPU"
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = TensorSpec(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))), _dims(engine.get_tensor_shape(name)))
            (self.inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else self.outputs).append(spec)
        lowest, _, highest = engine.get_tensor_profile_shape(self.inputs[0].name, 0)
        self.min_batch, self.max_batch = int(lowest[0]), int(highest[0])
        for spec in self.inputs + self.outputs:
            shape = (self.max_batch, *[int(d) for d in spec.shape[1:]])
            if any(d < 0 for d in shape):  # data-dependent dims: size them from the input profile
                shape = _dims(context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            self._buffers[spec.name] = (cuda.DeviceBuffer(nbytes), cuda.PinnedBuffer(shape, spec.dtype))

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One batch of up to `max_batch` images; returns the outputs named in `outputs` (all by default).

        A batch smaller than the profile's `min_batch` is padded with copies of its last item, and cut back after.
        """
        from . import cuda

        if self._context is None or self._stream is None:
            raise ModelError(f"{self.path}: the runner is not active (use it in a with block, or call activate)")
        count = next(iter(feed.values())).shape[0] if feed else 0
        if 0 < count < self.min_batch:
            padded = {name: np.concatenate([a, np.repeat(a[-1:], self.min_batch - count, axis=0)]) for name, a in feed.items()}
            return {name: value[:count] for name, value in self.infer(padded, outputs).items()}
        context, stream = self._context, self._stream
        self.check_feed(feed)
        output_names = [spec.name for spec in self.outputs]
        names = output_names if outputs is None else list(outputs)
        unknown = [n for n in names if n not in output_names]
        if unknown:
            raise OptionError(f"{self.path}: no output named {', '.join(unknown)}; outputs are "
                              f"{', '.join(spec.name for spec in self.outputs)}")
        batch = next(iter(feed.values())).shape[0]
        if not self.min_batch <= batch <= self.max_batch:
            raise OptionError(f"{self.path}: batch {batch} is outside the engine's profile, {self.min_batch} to "
                              f"{self.max_batch} (export it again with --batch MIN:OPT:MAX)")
        for name, array in feed.items():
            device, host = self._buffers[name]
            view = host.array[: array.shape[0]]
            view[...] = array
            if not context.set_input_shape(name, array.shape):
                raise OptionError(f"{self.path}: TensorRT refuses input {name} of shape {array.shape} (the engine's profile "
                                  f"takes batches of {self.min_batch} to {self.max_batch})")
            device.copy_from_host(view, stream)
        for name, (device, _) in self._buffers.items():
            context.set_tensor_address(name, device.ptr)
        with cuda.EventTimer(stream) as timer:
            if not context.execute_async_v3(int(stream.handle)):
                raise ModelError(f"{self.path}: TensorRT execution failed (see TensorRT's log above)")
        results = {}
        for name in names:
            device, host = self._buffers[name]
            shape = _dims(context.get_tensor_shape(name))
            view = host.array.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            device.copy_to_host(view, stream)
            results[name] = view
        stream.synchronize()
        self.last_gpu_ms = timer.elapsed_ms()
        return {name: array.copy() for name, array in results.items()}

    def deactivate(self) -> None:
        """Free the buffers and the stream, and forget the engine and its tensors."""
        for device, host in self._buffers.values():
            device.free()
            host.free()
        self._buffers = {}
        if self._stream is not None:
            self._stream.destroy()
        self._stream = None
        self._context = None
        self._engine = None
        self.inputs, self.outputs = [], []
