"""Engine runners: one small interface over ONNX Runtime and TensorRT 10 (no torch), and the registry that picks one.

A runner loads a model file, checks inputs against the model's own I/O description and
returns outputs as a name → array dict:

    with open_runner("model.onnx") as runner:
        outputs = runner.infer({INPUT: batch})

The runners themselves live in ort_runner.py (ONNX Runtime) and tensorrt_runner.py (TensorRT); each is
imported only when a model asks for it, and TensorRT and the CUDA bindings only when its runner activates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .contract import GraphMetadata
from .errors import OptionError

__all__ = ["TensorSpec", "Runner", "open_runner", "BACKENDS", "ENGINE_SUFFIXES"]

ENGINE_SUFFIXES = (".plan", ".engine")


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
        self.metadata: GraphMetadata | None = None  # None for a model that carries none of ours
        self.device = "cpu"  # what actually runs the model, in words
        self.notes: list[str] = []  # one line each: a provider that was asked for but did not run, and why

    def activate(self) -> None:
        raise NotImplementedError

    def deactivate(self) -> None:
        pass

    def infer(self, feed: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """Run one batch; returns the outputs named in `outputs` (all by default) as host arrays."""
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


def _onnxruntime_runner(path: Path, provider: str, batch: int | None, cuda_graph: bool) -> Runner:
    from .ort_runner import OnnxRuntimeRunner  # it builds on this module's Runner

    return OnnxRuntimeRunner(path, provider, batch, cuda_graph)


def _tensorrt_runner(path: Path) -> Runner:
    from .tensorrt_runner import TensorRTRunner  # it builds on this module's Runner

    return TensorRTRunner(path)


def open_runner(path: str | Path, backend: str = "auto", provider: str = "auto", batch: int | None = None,
                cuda_graph: bool = False) -> Runner:
    """A runner for `path`: TensorRT for .plan / .engine files, ONNX Runtime for .onnx (or as asked).

    `cuda_graph` with `batch`: ONNX Runtime's CUDA provider replays calls of that batch size as a
    CUDA graph (see OnnxRuntimeRunner); a TensorRT engine takes any batch of its profile.
    """
    path = Path(path)
    if backend == "auto":
        backend = "tensorrt" if path.suffix.lower() in ENGINE_SUFFIXES else "onnxruntime"
    if backend not in BACKENDS:
        raise OptionError(f"--backend {backend!r}: choose auto, {', '.join(BACKENDS)}")
    return BACKENDS[backend](path, provider, batch, cuda_graph)


# A new backend plugs in here: name -> builder(path, provider, batch, cuda_graph) of a Runner
# (activate / infer / deactivate); ssp-run and ssp-bench offer every name as --backend.
BACKENDS = {
    "tensorrt": lambda path, provider, batch, cuda_graph: _tensorrt_runner(path),
    "onnxruntime": _onnxruntime_runner,
}
