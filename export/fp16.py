"""FP16 ONNX graphs without onnxruntime's converter: float16 weights and activations,
float32 graph I/O, and a short list of op types kept in float32.

One pass over the nodes in topological order gives every float tensor one storage type:
a node computes in float16 unless its op type is in `keep_fp32`; data-movement nodes
(Reshape, Transpose, Concat, ...) keep the type of their data; a float input of the wrong
type gets one Cast per (tensor, type), reused by every consumer, so the graph stays in
single static assignment form by construction. Float initializers become float16 copies
where float16 nodes read them (values clamped to the float16 range).

Which op types must stay float32 is measured, not guessed: benchmarks/fp16_ops.py writes
the parity of each choice to benchmarks/results/fp16_ops_*.md.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KEEP_FP32", "FP16_MAX", "to_fp16", "count_casts"]

# Measured (benchmarks/results/fp16_ops_*.md) on the full-size graph with random weights: every op type passes
# the parity gate in float16, each that the previous converter kept in float32 included. Trained weights can
# have larger activations; `ssp-export --keep-fp32` keeps more op types in float32 where the gate says so.
# ReduceL2 (the L2 norm of mask-pooled CLIP features) stays float32 on a bound rather than a measurement:
# its sum of squares overflows float16 once a feature vector's norm passes 256; it is one node on a
# B x N x D tensor (two Casts).
KEEP_FP32 = ("ReduceL2",)
FP16_MAX = 65504.0

# Data movement: the output has the type of the data input(s), no arithmetic happens.
_FOLLOW = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "Gather", "GatherElements", "GatherND",
    "Concat", "Split", "Expand", "Identity", "Tile", "Pad", "DepthToSpace", "SpaceToDepth", "Where", "Max", "Min",
}
# Read only the shape of their input.
_SHAPE_ONLY = {"Shape", "Size"}
# Op types whose outputs are not floats whatever their inputs are.
_NON_FLOAT_OUTPUTS = {"ArgMax", "ArgMin", "NonZero", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And",
                      "Or", "Xor", "IsNaN", "IsInf"}
_SMALL = 4096  # initializers up to this many elements keep their values for type inference
# (op type, input index) whose type the ONNX spec fixes whatever the data type is.
_FIXED_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def _light(model):
    """`model` with its large initializers turned into typed graph inputs: the same graph for type and
    shape inference, without copying the weights (small ones keep their values: shapes, sizes, scales)."""
    import onnx

    graph = model.graph
    small = [t for t in graph.initializer if np.prod(t.dims, dtype=np.int64) <= _SMALL]
    large = [t for t in graph.initializer if np.prod(t.dims, dtype=np.int64) > _SMALL]
    return onnx.helper.make_model(
        onnx.helper.make_graph(
            list(graph.node), graph.name,
            list(graph.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in large],
            list(graph.output), small,
        ),
        opset_imports=model.opset_import, ir_version=model.ir_version,
    )


def _float_names(model) -> dict[str, int]:
    """Element type of every tensor whose type is known after ONNX type inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(_light(model))
    types = {}
    for info in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def _constants_to_initializers(graph) -> None:
    """Float Constant nodes become initializers, so each consumer gets them in its own type, as weights do."""
    from onnx import TensorProto, numpy_helper

    kept = []
    for node in graph.node:
        attribute = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        values = None
        if attribute is not None and attribute.name == "value" and attribute.t.data_type == TensorProto.FLOAT:
            values = numpy_helper.to_array(attribute.t)
        elif attribute is not None and attribute.name in ("value_float", "value_floats"):
            values = np.asarray(attribute.f if attribute.name == "value_float" else list(attribute.floats), np.float32)
        if values is None:
            kept.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)


def to_fp16(model, keep_fp32=KEEP_FP32):
    """A float16 copy of `model` (an onnx.ModelProto) with float32 inputs and outputs.

    Arguments:
      model: the float32 model; it is not modified.
      keep_fp32: op types that compute in float32 (their float inputs are cast up).

    Returns:
      onnx.ModelProto: the float16 model, checked by onnx.checker.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    keep_fp32 = set(keep_fp32)
    source = model
    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        raise ValueError("to_fp16: graphs with subgraphs (If, Loop, Scan) are not supported")
    _constants_to_initializers(graph)
    types = _float_names(model)

    initializers = {t.name: t for t in graph.initializer}
    stored: dict[str, int] = {i.name: i.type.tensor_type.elem_type for i in graph.input}  # tensor -> its type now
    stored.update({name: t.data_type for name, t in initializers.items()})
    converted: dict[tuple[str, int], str] = {}  # (tensor, wanted type) -> name of the copy or Cast output
    nodes: list = []
    used_initializers: set[str] = set()

    # Graph outputs keep float32: their producers write an internal name, a final Cast restores the public one.
    outputs = {o.name for o in graph.output if o.type.tensor_type.elem_type == FLOAT}
    internal = {name: name + "::fp16" for name in outputs}
    for node in graph.node:
        node.input[:] = [internal.get(i, i) for i in node.input]
        node.output[:] = [internal.get(o, o) for o in node.output]
    types.update({name: types.get(public, FLOAT) for public, name in internal.items()})

    def as_type(name: str, want: int) -> str:
        if stored.get(name) == want:
            used_initializers.add(name)
            return name
        key = (name, want)
        if key not in converted:
            new = f"{name}::{'fp16' if want == HALF else 'fp32'}"
            if name in initializers:
                values = numpy_helper.to_array(initializers[name])
                if want == HALF:
                    values = np.clip(values, -FP16_MAX, FP16_MAX)
                graph.initializer.append(numpy_helper.from_array(values.astype(np.float16 if want == HALF else np.float32), new))
                used_initializers.add(new)
            else:
                nodes.append(helper.make_node("Cast", [name], [new], to=want, name=new))
            stored[new] = want
            converted[key] = new
        return converted[key]

    def is_float(name: str) -> bool:
        return bool(name) and (stored.get(name) in (FLOAT, HALF) or (name not in stored and types.get(name) in (FLOAT, HALF)))

    for node in graph.node:
        float_inputs = [i for i, name in enumerate(node.input) if is_float(name) and (node.op_type, i) not in _FIXED_INPUTS]
        casts_away = node.op_type == "Cast" and all(a.i != FLOAT for a in node.attribute if a.name == "to")
        if node.op_type in _SHAPE_ONLY or casts_away:  # a float -> int cast reads its input at full precision
            want = None
        elif node.op_type in _FOLLOW:
            data_types = {stored.get(node.input[i]) for i in float_inputs if node.input[i] not in initializers}
            want = HALF if HALF in data_types or not data_types else FLOAT
        else:
            want = FLOAT if node.op_type in keep_fp32 else HALF
        if want is not None:
            for i in float_inputs:
                node.input[i] = as_type(node.input[i], want)
        for i, name in enumerate(node.input):  # an input whose type the spec fixes gets back its original one
            original = types.get(name)
            if (node.op_type, i) in _FIXED_INPUTS and name and original in (FLOAT, HALF) and stored.get(name) != original:
                node.input[i] = as_type(name, original)
        for name in node.input:
            if name in initializers:
                used_initializers.add(name)
        makes_type = node.op_type in ("Cast", "ConstantOfShape")  # output type set by an attribute
        if makes_type and want == HALF and types.get(node.output[0]) == FLOAT:
            if node.op_type == "ConstantOfShape" and not any(a.name == "value" for a in node.attribute):
                node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(np.zeros(1, np.float16))))
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == FLOAT:
                    attribute.i = HALF
                elif attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type == FLOAT:
                    values = np.clip(numpy_helper.to_array(attribute.t), -FP16_MAX, FP16_MAX).astype(np.float16)
                    attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))
        for index, name in enumerate(node.output):
            produced = types.get(name)
            if produced is None and float_inputs and index == 0 and node.op_type not in _NON_FLOAT_OUTPUTS | _SHAPE_ONLY:
                produced = FLOAT  # type inference gave up on this node: its data output has its inputs' type
            if produced in (FLOAT, HALF):
                computed = want is not None and (float_inputs or makes_type)
                stored[name] = want if computed else produced
        nodes.append(node)

    for public, name in internal.items():
        nodes.append(helper.make_node("Cast", [name], [public], to=FLOAT, name=f"{public}::output")
                     if stored.get(name) == HALF else helper.make_node("Identity", [name], [public], name=f"{public}::output"))

    kept = [t for t in graph.initializer if t.name in used_initializers]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.checker.check_model(_light(model), full_check=True)  # types agree at every node (strict inference)
    return model


def count_casts(model) -> int:
    """Cast nodes in a model: what a precision choice costs in extra kernels."""
    return sum(node.op_type == "Cast" for node in model.graph.node)
