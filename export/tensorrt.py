"""TensorRT 10 engine building (Python API) and the equivalent trtexec command line.

This code cannot run on the project's CI (no TensorRT, no GPU): every call below was checked
against the TensorRT 10 Python API documentation, and tests exercise it only where
`tensorrt` imports. It is kept deliberately small.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from ssprompt.runtime.contract import INPUT, EngineFacts, GraphMetadata
from ssprompt.runtime.files import atomic_path
from ssprompt.runtime.gpu import UNKNOWN_GPU, gpu_name

__all__ = ["BatchRange", "tensorrt_available", "build_engine", "trtexec_command"]


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
            raise ValueError(f"--batch {text!r}: expected MIN:OPT:MAX, e.g. 1:4:8") from None
        if not 1 <= lo <= opt <= hi:
            raise ValueError(f"--batch {text!r}: need 1 <= MIN <= OPT <= MAX")
        return cls(lo, opt, hi)


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _shape(batch: int, image_size: int) -> str:
    return f"{INPUT}:{batch}x{image_size}x{image_size}x3"


def trtexec_command(onnx_path: Path, plan_path: Path, image_size: int, batch: BatchRange, fp16: bool,
                    workspace_mib: int, timing_cache: Path, int8: bool = False) -> str:
    """The trtexec line that builds the same engine on the target machine.

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
        f"--memPoolSize=workspace:{workspace_mib}M",
        f"--timingCacheFile={timing_cache}",
    ]
    if fp16:
        parts.append("--stronglyTyped")
    if int8:  # QDQ graph (explicit quantization): INT8 where the graph quantizes, FP16 allowed for the rest
        parts += ["--int8", "--fp16"]
    return " ".join(parts)


def build_engine(onnx_path: Path, plan_path: Path, image_size: int, batch: BatchRange, fp16: bool,
                 workspace_mib: int, timing_cache: Path, onnx_sha256: str, log=print, int8: bool = False) -> EngineFacts:
    """Build and write a serialized engine; returns the facts for the sidecar.

    FP16: the ONNX graph is already FP16 with normalisations in FP32, so the network is
    created strongly typed and TensorRT follows the graph's types (the TensorRT 11 way,
    supported since 10.0). FP32: a default network. INT8 (a QDQ graph, explicit quantization): a
    default network with the INT8 and FP16 flags, so TensorRT runs the quantized layers in INT8 and
    may run the rest in FP16 (written without TensorRT at hand: untested here).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if fp16 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT cannot parse it: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, image_size, image_size, 3)  # noqa: E731
    profile.set_shape(INPUT, shape(batch.min), shape(batch.opt), shape(batch.max))
    config.add_optimization_profile(profile)
    cache_blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(cache, ignore_mismatch=False)

    log(f"building TensorRT {trt.__version__} engine ({'int8' if int8 else 'fp16' if fp16 else 'fp32'}, batch {batch.min}:{batch.opt}:{batch.max}); this takes minutes")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.write_bytes(bytes(plan))
    with atomic_path(timing_cache) as tmp:  # shared between builds: never leave half a cache
        tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return EngineFacts(trt.__version__, gpu_name() or UNKNOWN_GPU, [batch.min, batch.opt, batch.max], onnx_sha256)


def write_sidecar(plan_path: Path, metadata: GraphMetadata, facts: EngineFacts) -> Path:
    """The engine's metadata (the graph's, and what it was built with) as JSON beside it, in the contract's form."""
    sidecar = plan_path.with_suffix(plan_path.suffix + ".json")
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps(replace(metadata, engine=facts).encode(), indent=2))
    return sidecar
