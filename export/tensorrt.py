"""TensorRT 10 engine building (Python API) and the equivalent build script for trtexec.

Neither can run on the project's CI (no TensorRT, no GPU). What is checked there instead
(docs/tensorrt.md): mypy, strict, against the TensorRT bindings' stubs (`.ci/typecheck`); the
calls whose results matter, against fakes of the TensorRT objects; the trtexec line and the script;
and every op of the exported graphs against the ONNX-TensorRT parser's operator list.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ssprompt.runtime.contract import INPUT, INPUT_SPECS, EngineFacts, axis_sizes
from ssprompt.runtime.errors import ModelError, OptionError
from ssprompt.runtime.files import atomic_path
from ssprompt.runtime.gpu import UNKNOWN_GPU, gpu_name
from ssprompt.runtime.sidecar import SIDECAR_MODULE, sidecar_path

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["BatchRange", "tensorrt_available", "build_engine", "trtexec_command", "build_script"]


@dataclass(frozen=True)
class BatchRange:
    min: int  # smallest batch the engine accepts
    opt: int  # batch TensorRT tunes its kernels for
    max: int  # largest batch the engine accepts

    @classmethod
    def parse(cls, text: str) -> "BatchRange":
        """'MIN:OPT:MAX', e.g. '1:4:8'."""
        try:
            lo, opt, hi = (int(v) for v in text.split(":"))
        except ValueError:
            raise OptionError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:4:8") from None
        if not 1 <= lo <= opt <= hi:
            raise OptionError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)


def tensorrt_available() -> bool:
    """Whether the real TensorRT bindings import (a folder of type stubs named tensorrt imports too, empty)."""
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def _input_shapes(batch: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """Each contract input's shape at `batch` images of side `image_size`."""
    sizes = axis_sizes(image_size)
    return {spec.name: spec.shape(sizes, batch) for spec in INPUT_SPECS}


def _shape(batch: int, image_size: int) -> str:
    """trtexec's shape option value, e.g. images:4x1024x1024x3."""
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in _input_shapes(batch, image_size).items())


def trtexec_command(onnx_path: Path, plan_path: Path, image_size: int, batch: BatchRange, fp16: bool,
                    workspace_mib: int, timing_cache: Path, int8: bool = False) -> str:
    """The trtexec line that builds the same engine on the target machine (paths shell-quoted).

    With an FP16 ONNX graph (precision already in the file) TensorRT 10 builds it strongly
    typed; TensorRT 11 always does and has no --fp16 flag.
    """
    parts = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        f"--minShapes={_shape(batch.min, image_size)}",
        f"--optShapes={_shape(batch.opt, image_size)}",
        f"--maxShapes={_shape(batch.max, image_size)}",
        # A plain number is MiB on every 10.x; trtexec 10.0 multiplies a value with a unit by 2^20 once more.
        f"--memPoolSize=workspace:{workspace_mib}",
        f"--timingCacheFile={timing_cache}",
    ]
    if fp16:
        parts.append("--stronglyTyped")
    if int8:  # QDQ graph (explicit quantization): INT8 where the graph quantizes, FP16 allowed for the rest
        parts += ["--int8", "--fp16"]
    return " ".join(shlex.quote(part) for part in parts)


def build_script(onnx_name: str, plan_name: str, image_size: int, batch: BatchRange, fp16: bool, workspace_mib: int,
                 timing_cache: Path, int8: bool = False) -> str:
    """build_engine.sh, run from anywhere on the target machine: trtexec writes the plan under a temporary name, it is
    renamed when complete, and the sidecar ssp-export wrote is completed with the TensorRT version and GPU."""
    partial = plan_name + ".partial"
    command = trtexec_command(Path(onnx_name), Path(partial), image_size, batch, fp16, workspace_mib, timing_cache, int8)
    return "\n".join([
        "#!/bin/sh",
        "# Build the TensorRT engine on the target machine (TensorRT 10 and pip install 'ssprompt[tensorrt]'), then",
        f"# record in {sidecar_path(Path(plan_name)).name} what it was built with: ssp-run refuses the engine until then.",
        "set -eu",
        'cd "$(dirname "$0")"',
        command,
        f"mv {shlex.quote(partial)} {shlex.quote(plan_name)}",
        f'"${{PYTHON:-python3}}" -m {SIDECAR_MODULE} {shlex.quote(plan_name)} {shlex.quote(onnx_name)}',
        "",
    ])


def build_engine(onnx_path: Path, plan_path: Path, image_size: int, batch: BatchRange, fp16: bool,
                 workspace_mib: int, timing_cache: Path, onnx_sha256: str,
                 log: Callable[[str], None] = print, int8: bool = False) -> EngineFacts:
    """Build and write a serialized engine; returns the facts for the sidecar.

    FP16: the ONNX graph is already FP16 with normalisations in FP32, so the network is
    created strongly typed and TensorRT follows the graph's types (the TensorRT 11 way,
    supported since 10.0). FP32: a default network. INT8 (a QDQ graph, explicit quantization): a
    default network with the INT8 and FP16 flags, so TensorRT runs the quantized layers in INT8 and
    may run the rest in FP16 (written without TensorRT at hand: untested here). The timing cache is an
    aid: one that is corrupt, or from another GPU or TensorRT, is replaced by a fresh one, and one that
    cannot be saved is reported, never failing a build that succeeded.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if fp16 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise ModelError(f"{onnx_path}: TensorRT cannot parse it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shapes = [_input_shapes(b, image_size) for b in (batch.min, batch.opt, batch.max)]
    for name in shapes[0]:
        profile.set_shape(name, *(trt.Dims(list(shape[name])) for shape in shapes))
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, timing_cache, log)

    log(f"building TensorRT {trt.__version__} engine ({'int8' if int8 else 'fp16' if fp16 else 'fp32'}, "
        f"batch {batch.min}:{batch.opt}:{batch.max}); this takes minutes")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.write_bytes(memoryview(plan))
    _save_timing_cache(config, timing_cache, log)
    return EngineFacts(trt.__version__, gpu_name() or UNKNOWN_GPU, [batch.min, batch.opt, batch.max], onnx_sha256)


def _attach_timing_cache(config: "trt.IBuilderConfig", path: Path, log: Callable[[str], None]) -> None:
    """Attach the cache at `path`, or a fresh one where it is absent, corrupt or from another GPU or TensorRT."""
    blob = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(blob)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return
    if blob:
        problem = "is not a TensorRT timing cache" if cache is None else "is from another GPU or TensorRT version"
        log(f"{path}: {problem}; starting a fresh one (it is replaced after the build)")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        log(f"{path}: TensorRT could not start a timing cache; building without one")


def _save_timing_cache(config: "trt.IBuilderConfig", path: Path, log: Callable[[str], None]) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    try:
        with atomic_path(path) as tmp:  # shared between builds: never leave half a cache
            tmp.write_bytes(memoryview(cache.serialize()))
    except OSError as err:
        log(f"{path}: the timing cache could not be saved ({err.strerror or err}); the engine is built")
