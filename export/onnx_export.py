"""Trace the export graph to ONNX, simplify it, make the FP16 variant and stamp the metadata."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from ssprompt.runtime.contract import INPUT, OUTPUTS, encode_metadata

from .graph import ExportGraph, dummy_inputs

__all__ = ["OPSET", "EXTERNAL_DATA_LIMIT", "export_onnx", "to_fp16", "write_model"]

OPSET = 17  # first opset with LayerNormalization
EXTERNAL_DATA_LIMIT = 1_800_000_000  # bytes of weights above which tensors go to a .data file (protobuf caps at 2 GB)
# Kept in FP32 in FP16 graphs: normalisations and sums of squares (FP16 overflows past 65504),
# and the softmax / division of the semantic map, whose small probabilities underflow.
FP32_OPS = [
    "LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare",
    "Pow", "Sqrt", "Div", "Resize", "ArgMax", "ReduceMax",
]


def _dynamic_axes() -> dict[str, dict[int, str]]:
    return {name: {0: "batch"} for name in (INPUT, *OUTPUTS)}


def export_onnx(graph: ExportGraph) -> "onnx.ModelProto":  # noqa: F821
    """Trace `graph` with the legacy TorchScript exporter (dynamic batch axis); returns the model in memory."""
    inputs = dummy_inputs(graph.image_size, batch=2)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX export
    try:
        return _trace(graph, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _trace(graph: ExportGraph, inputs: dict[str, torch.Tensor]) -> "onnx.ModelProto":  # noqa: F821
    import onnx

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python values
        traced = Path(tmp) / "traced.onnx"
        torch.onnx.export(
            graph,
            tuple(inputs.values()),
            str(traced),
            input_names=list(inputs),
            output_names=list(OUTPUTS),
            dynamic_axes=_dynamic_axes(),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        return onnx.load(str(traced))  # pulls external data in, when the exporter wrote any


def simplify(model: "onnx.ModelProto") -> "onnx.ModelProto":  # noqa: F821
    """onnxslim where installed and the model fits in one protobuf; otherwise unchanged."""
    try:
        import onnxslim
    except ImportError:
        return model
    if model.ByteSize() > EXTERNAL_DATA_LIMIT:
        return model
    return onnxslim.slim(model)


def to_fp16(model: "onnx.ModelProto") -> "onnx.ModelProto":  # noqa: F821
    """FP16 weights and activations, FP32 I/O, normalisation and softmax kept FP32.

    The same graph a strongly typed TensorRT network (TensorRT 11) needs: precision is
    decided in the ONNX file, not by builder flags.
    """
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP32_OPS, max_finite_val=65504.0
    )
    return simplify(converted)  # the converter can leave its casts out of topological order; onnxslim sorts


def write_model(model: "onnx.ModelProto", path: str | Path, metadata: dict) -> Path:  # noqa: F821
    """Stamp metadata, write (external data past 1.8 GB), check with onnx.checker."""
    import onnx

    path = Path(path)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, encode_metadata(metadata))
    external = model.ByteSize() > EXTERNAL_DATA_LIMIT
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
        location=path.name + ".data" if external else None,
    )
    onnx.checker.check_model(str(path))
    return path
