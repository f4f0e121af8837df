"""The ONNX Runtime runner: the best available execution provider (TensorRT, CUDA, CPU), or the one asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .contract import BATCH_AXIS, GraphMetadata, MetadataError
from .errors import ModelError, OptionError
from .images import error_reason
from .runner import Runner, TensorSpec

__all__ = ["OnnxRuntimeRunner", "tensorrt_libraries_load", "ORT_PROVIDERS"]

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
# What onnxruntime-gpu's TensorRT provider links against (TensorRT 10); without them it cannot start.
TENSORRT_LIBRARIES = ("libnvinfer.so.10", "libnvonnxparser.so.10")
CUDA_OPTIONS = {
    "arena_extend_strategy": "kSameAsRequested",  # grow the memory arena by what is asked, not to a power of two
    "do_copy_in_default_stream": "1",
}


def tensorrt_libraries_load() -> bool:
    """Whether TensorRT's shared libraries load in this process (asked before requesting the provider,
    which otherwise prints error blocks before it falls back)."""
    import ctypes

    try:
        for name in TENSORRT_LIBRARIES:
            ctypes.CDLL(name)
    except OSError:
        return False
    return True


_ORT_TYPES = {
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime with the best available execution provider (TensorRT, CUDA, CPU), or the one asked for.

    The TensorRT provider is asked for only where TensorRT's libraries load; a provider that is
    asked for but cannot start falls back to the next, and `notes` says so in one line.
    On a GPU provider, inputs are copied in and the outputs asked for are copied back through
    IOBinding. `cuda_graph` (CUDA provider, with `batch`) builds the session for that batch size
    (the batch axis fixed, every shape computation folded into constants, smaller batches padded)
    and replays each call as one captured CUDA graph over fixed device buffers. It is off by
    default: on the H200 it saved a little time at batch 1 but cost throughput and memory at batch 8
    (benchmarks/results/gpu_ablation_cuda.md has the figures).
    """

    backend = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "auto", batch: int | None = None, cuda_graph: bool = False,
                 cuda_options: dict[str, str] | None = None) -> None:
        super().__init__(path)
        if provider != "auto" and provider not in ORT_PROVIDERS:
            raise OptionError(f"--provider {provider!r}: choose auto, {', '.join(ORT_PROVIDERS)}")
        if batch is not None and batch < 1:
            raise OptionError(f"batch must be at least 1, got {batch}")
        self.provider = provider
        self.batch = batch
        self.fixed_batch: int | None = None  # the batch the session was built for, where it fixed one
        self.cuda_graph = cuda_graph and batch is not None
        self.cuda_options = dict(CUDA_OPTIONS, **(cuda_options or {}))
        self.threads: int | None = None  # intra-op threads; None: ONNX Runtime's default (every physical core)
        self.session = None
        self._binding = None

    def _chain(self, available: list[str], reasons: list[str]) -> list[str]:
        """Provider keys to try, best first; why an explicitly requested one is left out goes to `reasons`."""
        wanted = list(ORT_PROVIDERS) if self.provider == "auto" else list(ORT_PROVIDERS)[list(ORT_PROVIDERS).index(self.provider):]
        chain = []
        for key in wanted:
            if ORT_PROVIDERS[key] not in available:
                if key == self.provider:
                    reasons.append(f"{ORT_PROVIDERS[key]} is not in this onnxruntime (pip install onnxruntime-gpu)")
            elif key == "tensorrt" and not tensorrt_libraries_load():
                if key == self.provider:
                    reasons.append(f"TensorrtExecutionProvider needs {' and '.join(TENSORRT_LIBRARIES)}, which do not load here")
            else:
                chain.append(key)
        return chain

    def _options(self, key: str) -> dict[str, str]:
        if key == "tensorrt":  # engines built once per model and shape, kept between sessions
            cache = Path(os.environ.get("SSPROMPT_CACHE", Path.home() / ".cache" / "ssprompt")) / "tensorrt"
            return {"trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "1"}
        if key != "cuda":
            return {}
        return dict(self.cuda_options, enable_cuda_graph="1" if self.cuda_graph else "0")

    def _session_options(self, ort, fixed: bool):
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported by `notes` and `device`
        # The memory pattern preallocates every intermediate of a fixed-shape run in one plan; measured on the
        # full-size graph (ONNX Runtime CPU, batch 1) it raised the peak from 4.3 to 7.4 GB.
        options.enable_mem_pattern = False
        if self.threads:
            options.intra_op_num_threads = self.threads
        if fixed:
            options.add_free_dimension_override_by_name(BATCH_AXIS, self.batch)
        return options

    def activate(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelError(f"{self.path}: model not found")
        reasons: list[str] = []
        chain = self._chain(ort.get_available_providers(), reasons)
        if "cuda" in chain and hasattr(ort, "preload_dlls"):
            try:
                ort.preload_dlls()  # CUDA and cuDNN from NVIDIA's pip packages, where those are installed
            except Exception:  # noqa: BLE001 - the provider then reports what is missing
                pass
        last_error: Exception | None = None
        fixed = False
        i = 0
        while i < len(chain):
            key = chain[i]
            providers = [(ORT_PROVIDERS[k], self._options(k)) for k in chain[i:]]
            fixed = key == "cuda" and self.cuda_graph
            try:
                self.session = ort.InferenceSession(str(self.path), sess_options=self._session_options(ort, fixed),
                                                    providers=providers)
            except Exception as err:  # noqa: BLE001 - ORT raises its own types, all meaning "not with these"
                last_error = err
                if "Protobuf parsing failed" in str(err) or "INVALID_PROTOBUF" in str(err) or "NO_SUCHFILE" in str(err):
                    break
                if fixed:  # the same provider without graph capture, before giving it up
                    self.cuda_graph = False
                    reasons.append(f"CUDA graph capture could not start ({error_reason(err)})")
                    continue
                reasons.append(f"{ORT_PROVIDERS[key]} could not start ({error_reason(err)})")
                i += 1
                continue
            if fixed and self.session.get_providers()[0] != ORT_PROVIDERS["cuda"]:
                # onnxruntime fell back to the CPU on its own: rebuild with the CPU's options (a dynamic batch axis)
                self.cuda_graph = False
                self.session = None
                continue
            break
        if self.session is None:
            raise ModelError(f"{self.path}: not a loadable ONNX model ({error_reason(last_error) if last_error else 'no provider'})")
        self.device = self.session.get_providers()[0]
        if chain and self.device != ORT_PROVIDERS[chain[0]] and not reasons:
            reasons.append(f"{ORT_PROVIDERS[chain[0]]} could not start")
        self.notes = [f"{'; '.join(reasons)}; running on {self.device}"] if reasons else []
        self.fixed_batch = self.batch if fixed else None
        self.cuda_graph = fixed
        self.inputs = [TensorSpec(i.name, np.dtype(_ORT_TYPES[i.type]), self._fixed(i.shape)) for i in self.session.get_inputs()]
        self.outputs = [TensorSpec(o.name, np.dtype(_ORT_TYPES[o.type]), self._fixed(o.shape)) for o in self.session.get_outputs()]
        if self.cuda_graph and not all(isinstance(d, int) for o in self.outputs for d in o.shape):
            self.cuda_graph = False  # fixed device buffers need every output's size; an older export declares names
            self.notes.append("CUDA graph off: the model does not declare static output shapes (export it again)")
        try:
            self.metadata = GraphMetadata.decode(self.session.get_modelmeta().custom_metadata_map)
        except MetadataError as err:
            raise ModelError(f"{self.path}: {err}") from None

    def _fixed(self, shape) -> tuple:
        """The declared shape with the batch axis set where this session fixes it."""
        shape = tuple(shape)
        if self.fixed_batch is not None and shape and not isinstance(shape[0], int):
            return (self.fixed_batch, *shape[1:])
        return shape

    @property
    def on_gpu(self) -> bool:
        return self.device != ORT_PROVIDERS["cpu"]

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """A batch smaller than a fixed `batch` is padded with copies of its last item, and cut back after."""
        count = next(iter(feed.values())).shape[0] if feed else 0
        if self.fixed_batch is not None and 0 < count < self.fixed_batch:
            padded = {name: np.concatenate([a, np.repeat(a[-1:], self.fixed_batch - count, axis=0)]) for name, a in feed.items()}
            return {name: value[:count] for name, value in self.infer(padded, outputs).items()}
        self.check_feed(feed)
        names = [o.name for o in self.outputs] if outputs is None else list(outputs)
        unknown = [n for n in names if n not in {o.name for o in self.outputs}]
        if unknown:
            raise OptionError(f"{self.path}: no output named {', '.join(unknown)}; outputs are {', '.join(o.name for o in self.outputs)}")
        try:
            if self.cuda_graph:
                failed = self._capture_failure(feed, names)
                if isinstance(failed, dict):
                    return failed
                notes = self.notes
                self.deactivate()
                self.cuda_graph = False
                self.activate()
                self.notes = notes + self.notes + [f"CUDA graph capture failed ({failed}); running without it"]
            if not self.on_gpu:
                return dict(zip(names, self.session.run(names, feed)))
            binding = self.session.io_binding()
            for name, array in feed.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            for spec in self.outputs:
                binding.bind_output(spec.name, "cuda")
            self.session.run_with_iobinding(binding)
            values = dict(zip([o.name for o in self.outputs], binding.get_outputs()))
            return {name: values[name].numpy() for name in names}
        except ModelError:
            raise
        except Exception as err:  # noqa: BLE001 - onnxruntime's own types: out of memory, a failing kernel, ...
            raise ModelError(f"{self.path}: onnxruntime could not run it on {self.device} ({error_reason(err)})") from None

    def _capture_failure(self, feed: dict[str, np.ndarray], names: list[str]) -> dict | str:
        """The bound, graph-replaying call's outputs, or why its first call (the capture) failed.
        Failures of later calls, and failures that are not about the graph capture, propagate."""
        try:
            return self._infer_bound(feed, names)
        except Exception as err:  # noqa: BLE001 - a graph that cannot be captured fails in its first run
            reason = error_reason(err)
            if self._binding is None or self._binding[2] or not any(w in reason.lower() for w in ("captur", "graph")):
                raise
            return reason

    def _infer_bound(self, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Fixed device buffers for every input and output, as CUDA graph replay needs; copies in place."""
        import onnxruntime as ort

        if self._binding is None:
            device = "cuda" if self.on_gpu else "cpu"
            count = next(iter(feed.values())).shape[0]
            binding = self.session.io_binding()
            values = {}
            for name, array in feed.items():  # a copy: on the CPU the value would share the caller's array
                values[name] = ort.OrtValue.ortvalue_from_numpy(np.array(array, order="C", copy=True), device, 0)
                binding.bind_ortvalue_input(name, values[name])
            for spec in self.outputs:
                shape = [count, *spec.shape[1:]]
                values[spec.name] = ort.OrtValue.ortvalue_from_shape_and_type(shape, spec.dtype.type, device, 0)
                binding.bind_ortvalue_output(spec.name, values[spec.name])
            self._binding = (binding, values, False)
        else:
            binding, values, _ = self._binding
            for name, array in feed.items():
                values[name].update_inplace(np.ascontiguousarray(array))
        self.session.run_with_iobinding(binding)
        self._binding = (binding, values, True)  # captured (or replayed): later failures are real ones
        # From the GPU numpy() copies to the host; on the CPU it is a view of the buffer the next call overwrites.
        return {name: values[name].numpy() if self.on_gpu else values[name].numpy().copy() for name in names}

    def deactivate(self) -> None:
        self._binding = None
        self.session = None
