"""A Triton Inference Server model repository for the exported graph (ONNX and TensorRT plan)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ssprompt.runtime.contract import INPUT_SPECS, OUTPUT_SPECS, GraphMetadata, IOSpec

__all__ = ["write_triton_repository", "validate_config"]

# the contract's dtype names -> Triton data_type
_TRITON_TYPES = {"uint8": "TYPE_UINT8", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def _io_signature(metadata: GraphMetadata) -> tuple[list[tuple], list[tuple]]:
    """(name, dtype name, dims without the batch axis) of each contract input and output, at the graph's sizes.
    Triton adds the batch axis itself (max_batch_size), as the first: the contract's batch is axis 0 throughout."""
    sizes = metadata.axis_sizes()

    def describe(specs: tuple[IOSpec, ...]) -> list[tuple]:
        return [(spec.name, spec.dtype, list(spec.shape(sizes)[1:])) for spec in specs]

    return describe(INPUT_SPECS), describe(OUTPUT_SPECS)


def _config_text(name: str, platform: str, max_batch: int, inputs: list[tuple], outputs: list[tuple], kind: str) -> str:
    def tensor(entry: tuple) -> str:
        tensor_name, dtype, dims = entry
        return f'  {{\n    name: "{tensor_name}"\n    data_type: {_TRITON_TYPES[dtype]}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'

    return "\n".join([
        f'name: "{name}"',
        f'platform: "{platform}"',
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(tensor(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(tensor(t) for t in outputs) + "\n]",
        "dynamic_batching {\n  max_queue_delay_microseconds: 100\n}",
        f"instance_group [\n  {{\n    count: 1\n    kind: {kind}\n  }}\n]",
        "",
    ])


def write_triton_repository(repo: Path, name: str, onnx_path: Path, metadata: GraphMetadata, max_batch: int,
                            plan_path: Path | None = None) -> list[Path]:
    """Write `repo/<name>/` (ONNX Runtime) and, with a plan, `repo/<name>_trt/` (TensorRT): the contract's inputs and
    outputs at the sizes `metadata` gives.

    Returns the config.pbtxt paths. An ONNX model with external data goes in as a folder
    `1/model.onnx/` holding both files, as Triton expects.
    """
    inputs, outputs = _io_signature(metadata)
    configs = []
    model_dir = repo / name
    version = model_dir / "1"
    version.mkdir(parents=True, exist_ok=True)
    data_file = onnx_path.with_name(onnx_path.name + ".data")
    if data_file.exists():
        (version / "model.onnx").mkdir()
        shutil.copy2(onnx_path, version / "model.onnx" / onnx_path.name)
        shutil.copy2(data_file, version / "model.onnx" / data_file.name)
    else:
        shutil.copy2(onnx_path, version / "model.onnx")
    (model_dir / "config.pbtxt").write_text(_config_text(name, "onnxruntime_onnx", max_batch, inputs, outputs, "KIND_AUTO"))
    configs.append(model_dir / "config.pbtxt")
    if plan_path is not None:
        trt_dir = repo / f"{name}_trt"
        (trt_dir / "1").mkdir(parents=True, exist_ok=True)
        shutil.copy2(plan_path, trt_dir / "1" / "model.plan")
        (trt_dir / "config.pbtxt").write_text(_config_text(f"{name}_trt", "tensorrt_plan", max_batch, inputs, outputs, "KIND_GPU"))
        configs.append(trt_dir / "config.pbtxt")
    return configs


def validate_config(path: Path):
    """Parse a config.pbtxt with Triton's own ModelConfig protobuf (tritonclient[grpc]); returns the message.

    Raises ImportError where tritonclient's grpc extra is not installed.
    """
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
