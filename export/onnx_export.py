"""Trace the export graph to ONNX, simplify it, declare its static shapes and stamp the metadata."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from ssprompt.runtime.contract import BATCH_AXIS, INPUT_SPECS, OUTPUT_SPECS, OUTPUTS, GraphMetadata

from .graph import ExportGraph, dummy_inputs, graph_axis_sizes

__all__ = ["OPSET", "EXTERNAL_DATA_LIMIT", "export_onnx", "declare_output_shapes", "write_model"]

OPSET = 17  # first opset with LayerNormalization
EXTERNAL_DATA_LIMIT = 1_800_000_000  # bytes of weights above which tensors go to a .data file (protobuf caps at 2 GB)


def _dynamic_axes() -> dict[str, dict[int, str]]:
    """The contract's dynamic axes (the batch) of every input and output, by position."""
    return {spec.name: {i: axis for i, axis in enumerate(spec.axes) if axis == BATCH_AXIS}
            for spec in INPUT_SPECS + OUTPUT_SPECS}


def export_onnx(graph: ExportGraph) -> "onnx.ModelProto":  # noqa: F821
    """Trace `graph` with the legacy TorchScript exporter, simplify it, and declare every axis but
    the batch static. Returns the model in memory.
    """
    inputs = dummy_inputs(graph.image_size, batch=2)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused MHA kernel has no ONNX export
    try:
        model = _trace(graph, inputs)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return declare_output_shapes(simplify(model), graph_axis_sizes(graph.model))


def declare_output_shapes(model: "onnx.ModelProto", sizes: dict[str, int]) -> "onnx.ModelProto":  # noqa: F821
    """Write each contract output's axes into the graph output's type: the batch as its name, every other axis as
    its size in `sizes`; the tracer leaves data-dependent names there."""
    specs = {spec.name: spec for spec in OUTPUT_SPECS}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for size in specs[output.name].shape(sizes):
            if size == BATCH_AXIS:
                dims.add().dim_param = BATCH_AXIS
            else:
                dims.add().dim_value = int(size)
    return model


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


def _copy(model: "onnx.ModelProto") -> "onnx.ModelProto":  # noqa: F821
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def write_model(model: "onnx.ModelProto", path: str | Path, metadata: GraphMetadata) -> Path:  # noqa: F821
    """Stamp metadata, write (external data past 1.8 GB), check with onnx.checker."""
    import onnx

    path = Path(path)
    external = model.ByteSize() > EXTERNAL_DATA_LIMIT
    if external:  # saving with external data moves the weights out of the proto: keep the caller's whole
        model = _copy(model)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata.encode())
    onnx.save_model(
        model, str(path), save_as_external_data=external, all_tensors_to_one_file=True,
        location=path.name + ".data" if external else None,
    )
    onnx.checker.check_model(str(path))
    return path
