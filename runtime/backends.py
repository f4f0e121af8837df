"""Engine runners: one small interface over ONNX Runtime and TensorRT 10 (no torch).

A runner loads a model file, checks inputs against the model's own I/O description and
returns outputs as a name → array dict:

    with open_runner("model.onnx") as runner:
        outputs = runner.infer({INPUT: batch})

TensorRT and the CUDA bindings are imported only when a TensorRT runner activates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import decode_metadata
from .images import error_reason

__all__ = [
    "ModelError",
    "TensorSpec",
    "Runner",
    "OnnxRuntimeRunner",
    "TensorRTRunner",
    "open_runner",
    "check_sidecar",
    "ENGINE_SUFFIXES",
]

ENGINE_SUFFIXES = (".plan", ".engine")
ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


class ModelError(RuntimeError):
    """A model or engine that cannot be used here; one line naming the file and what to do."""


@dataclass(frozen=True)
class TensorSpec:
    name: str  # tensor name in the graph
    dtype: np.dtype  # element type
    shape: tuple  # dims; -1 or a string where dynamic


class Runner:
    """activate → infer (any number of times) → deactivate; or use it as a context manager."""

    backend = "abstract"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.inputs: list[TensorSpec] = []
        self.outputs: list[TensorSpec] = []
        self.metadata: dict = {}
        self.device = "cpu"  # what actually runs the model, in words

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def check_feed(self, feed: dict[str, np.ndarray]) -> None:
        """Raise ValueError unless `feed` names every input with the right dtype and rank."""
        expected = {spec.name: spec for spec in self.inputs}
        if set(feed) != set(expected):
            raise ValueError(f"{self.path}: inputs are {sorted(expected)}, got {sorted(feed)}")
        for name, array in feed.items():
            spec = expected[name]
            if array.dtype != spec.dtype or array.ndim != len(spec.shape):
                raise ValueError(
                    f"{self.path}: input {name} must be {spec.dtype} with {len(spec.shape)} dims {spec.shape}, "
                    f"got {array.dtype} {array.shape}"
                )
            for got, want in zip(array.shape, spec.shape):
                if isinstance(want, int) and want >= 0 and got != want:
                    raise ValueError(f"{self.path}: input {name} must have shape {spec.shape}, got {array.shape}")


# --------------------------------------------------------------------------- ONNX Runtime


_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the best available execution provider (TensorRT, CUDA, CPU), or the one asked for.

    A provider that is requested but cannot start (onnxruntime-gpu's TensorRT provider
    without TensorRT's libraries, say) falls back to the next; `device` says which ran.
    On a GPU provider the outputs are bound on the device through IOBinding.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "auto") -> None:
        super().__init__(path)
        if provider != "auto" and provider not in ORT_PROVIDERS:
            raise ValueError(f"--provider {provider!r}: choose auto, {', '.join(ORT_PROVIDERS)}")
        self.provider = provider
        self.session = None

    def _candidates(self, available: list[str]) -> list[list[str]]:
        order = list(ORT_PROVIDERS) if self.provider == "auto" else list(ORT_PROVIDERS)[list(ORT_PROVIDERS).index(self.provider):]
        chain = [ORT_PROVIDERS[p] for p in order if ORT_PROVIDERS[p] in available]
        return [chain[i:] for i in range(len(chain))]  # drop the front provider on each failure

    def activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"{self.path}: model not found")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by `device`
        last_error: Exception | None = None
        for providers in self._candidates(ort.get_available_providers()):
            try:
                self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
                break
            except Exception as err:  # noqa: BLE001 - ORT raises its own types, all meaning "not with these"
                last_error = err
                if "Protobuf parsing failed" in str(err) or "INVALID_PROTOBUF" in str(err) or "NO_SUCHFILE" in str(err):
                    break
        if self.session is None:
            raise ModelError(f"{self.path}: not a loadable ONNX model ({error_reason(last_error) if last_error else 'no provider'})")
        self.device = self.session.get_providers()[0]
        self.inputs = [TensorSpec(i.name, np.dtype(_ORT_TYPES[i.type]), tuple(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, np.dtype(_ORT_TYPES[o.type]), tuple(o.shape)) for o in self.session.get_outputs()]
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_feed(feed)
        names = [o.name for o in self.outputs]
        if self.device == ORT_PROVIDERS["cpu"]:
            return dict(zip(names, self.session.run(names, feed)))
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        return dict(zip(names, binding.copy_outputs_to_cpu()))

    def deactivate(self) -> None:
        self.session = None


# --------------------------------------------------------------------------- TensorRT


def check_sidecar(plan: Path, sidecar: dict, tensorrt_version: str, gpu_name: str) -> None:
    """Refuse an engine built with another TensorRT version or on another GPU."""
    built_version, built_gpu = sidecar.get("tensorrt_version"), sidecar.get("gpu")
    if built_version != tensorrt_version or built_gpu != gpu_name:
        raise ModelError(
            f"{plan}: built with TensorRT {built_version} on {built_gpu}, this is TensorRT {tensorrt_version} on "
            f"{gpu_name}; rebuild it here with ssp-export --engine (or the trtexec line in build_engine.sh)"
        )


class TensorRTRunner(Runner):
    """A TensorRT 10 engine: name-based I/O, device buffers sized for the profile's max batch,
    pinned host buffers, one CUDA stream; GPU time of the last call in `last_gpu_ms`."""

    backend = "tensorrt"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self.last_gpu_ms: float | None = None
        self._buffers: dict = {}

    def activate(self) -> None:
        try:
            import tensorrt as trt
        except ImportError:
            raise ModelError(f"{self.path}: TensorRT engines need the tensorrt package (pip install 'ssprompt[tensorrt]')") from None
        from . import cuda

        sidecar_path = self.path.with_suffix(self.path.suffix + ".json")
        if not self.path.is_file():
            raise ModelError(f"{self.path}: engine not found")
        if not sidecar_path.is_file():
            raise ModelError(f"{sidecar_path}: missing; the engine's metadata comes from this file written by ssp-export")
        sidecar = json.loads(sidecar_path.read_text())
        check_sidecar(self.path, sidecar, trt.__version__, cuda.device_name())
        self.metadata = dict(sidecar)

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise ModelError(f"{self.path}: TensorRT cannot deserialize it (corrupt, or another TensorRT version)")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.device = cuda.device_name()
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            spec = TensorSpec(name, dtype, tuple(self.engine.get_tensor_shape(name)))
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            (self.inputs if is_input else self.outputs).append(spec)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.inputs[0].name, 0)[2][0])
        for spec in self.inputs + self.outputs:
            shape = (self.max_batch, *[int(d) for d in spec.shape[1:]])
            if any(d < 0 for d in shape):  # data-dependent dims: size them from the input profile
                shape = tuple(self.context.get_tensor_shape(spec.name))
            nbytes = int(np.prod(shape)) * spec.dtype.itemsize
            self._buffers[spec.name] = (cuda.DeviceBuffer(nbytes), cuda.PinnedBuffer(shape, spec.dtype))

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from . import cuda

        self.check_feed(feed)
        batch = next(iter(feed.values())).shape[0]
        if batch > self.max_batch:
            raise ValueError(f"{self.path}: batch {batch} exceeds the engine's maximum {self.max_batch}")
        for name, array in feed.items():
            device, host = self._buffers[name]
            view = host.array[: array.shape[0]]
            view[...] = array
            self.context.set_input_shape(name, array.shape)
            device.copy_from_host(view, self.stream)
        for name, (device, _) in self._buffers.items():
            self.context.set_tensor_address(name, device.ptr)
        with cuda.EventTimer(self.stream) as timer:
            if not self.context.execute_async_v3(int(self.stream.handle)):
                raise RuntimeError(f"{self.path}: TensorRT execution failed")
        outputs = {}
        for spec in self.outputs:
            device, host = self._buffers[spec.name]
            shape = tuple(self.context.get_tensor_shape(spec.name))
            view = host.array.reshape(-1)[: int(np.prod(shape))].reshape(shape)
            device.copy_to_host(view, self.stream)
            outputs[spec.name] = view
        self.stream.synchronize()
        self.last_gpu_ms = timer.elapsed_ms()
        return {name: array.copy() for name, array in outputs.items()}

    def deactivate(self) -> None:
        for device, host in self._buffers.values():
            device.free()
            host.free()
        self._buffers = {}


def open_runner(path: str | Path, backend: str = "auto", provider: str = "auto") -> Runner:
    """A runner for `path`: TensorRT for .plan / .engine files, ONNX Runtime for .onnx (or as asked)."""
    path = Path(path)
    if backend == "auto":
        backend = "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"
    if backend == "tensorrt":
        return TensorRTRunner(path)
    if backend == "onnxruntime":
        return OnnxRuntimeRunner(path, provider)
    raise ValueError(f"--backend {backend!r}: choose auto, tensorrt or onnxruntime")
