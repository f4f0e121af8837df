"""Export-only: residual additions and the layer norms that read them as ONNX Runtime's SkipLayerNormalization.

`ssp-export --ort-fused` traces the graph with ONNX Runtime's fused attention (encoder_attention.py,
clip_attention.py, prompt_decoder.py); this pass, on the traced (FP32 or FP16) ONNX model, then writes
every

    y = LayerNormalization(a + b)          (and a + b itself where other nodes read it)
    y = LayerNormalization(a + (b + bias))

as one com.microsoft SkipLayerNormalization node: it reads a and b once and writes y (and the sum where it
is still needed), where the Add and the norm read and wrote the sum twice more (and the bias Add a
whole tensor more). ONNX Runtime's own optimizer (onnxruntime.transformers' FusionSkipLayerNormalization,
and the same fusion at session start) takes only (batch, sequence, hidden) tensors with skips of one
shape; here SAM's and the decoder's (B, h, w, C) and (B, n, P, E) maps are viewed as (B, h*w, C) and
(B, n*P, E) by Reshapes around the node (free: views). Additions whose inputs differ in shape (a
broadcast skip, such as the decoder's first layer adding each image's keys to every prompt's) stay as
they are. A norm kept in float32 by the FP16 export (a Cast between the Add and the norm) is left alone.

Shapes: every tensor of the pattern has a batch axis first and static sizes after it, the last the
normalised C.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["fuse_skip_layer_norms"]


def _static_shapes(model) -> dict[str, tuple]:
    """name -> shape (a str for a symbolic axis) of every tensor that ONNX Runtime's symbolic shape inference finds
    (ONNX's own stops at the com.microsoft attention nodes)."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    from .fp16 import _light

    inferred = SymbolicShapeInference.infer_shapes(_light(model), auto_merge=True)
    shapes = {}
    for info in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in tensor.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    return shapes


def fuse_skip_layer_norms(model):
    """A copy of `model` (onnx.ModelProto) with Add (+ bias Add) -> LayerNormalization as SkipLayerNormalization.

    Returns:
      (onnx.ModelProto, int): the new model, checked by onnx.checker, and how many norms were fused.
    """
    import onnx
    from onnx import helper, numpy_helper

    source = model
    model = onnx.ModelProto()
    model.CopyFrom(source)
    graph = model.graph
    shapes = _static_shapes(model)
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    for output in graph.output:
        readers[output.name] = readers.get(output.name, 0) + 1

    def fixed_after_batch(name: str) -> tuple[int, ...] | None:
        shape = shapes.get(name)
        if shape is None or len(shape) < 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            return None
        return shape

    def bias_add(name: str, channels: int):
        """(node, data input, bias) when `name` is data + a (C,) initializer read by one node only."""
        node = producer.get(name)
        if node is None or node.op_type != "Add" or readers.get(name) != 1:
            return None
        for data, bias in (node.input, node.input[::-1]):
            if bias in initializers and tuple(initializers[bias].dims) == (channels,) and data not in initializers:
                return node, data, bias
        return None

    removed: set[int] = set()
    replacement: dict[int, list] = {}  # id of the Add a fused norm replaces -> nodes in its place
    fused = 0
    for norm in graph.node:
        if norm.op_type != "LayerNormalization" or len(norm.output) > 1 and any(norm.output[1:]):
            continue
        add = producer.get(norm.input[0])
        if add is None or add.op_type != "Add" or id(add) in removed or any(i in initializers for i in add.input):
            continue
        shape = fixed_after_batch(add.output[0])
        axis = next((a.i for a in norm.attribute if a.name == "axis"), -1)
        if shape is None or axis not in (-1, len(shape) - 1) or any(shapes.get(i) != shape for i in add.input):
            continue
        channels = shape[-1]
        data, skip = add.input
        bias = None
        for first, second in ((data, skip), (skip, data)):
            found = bias_add(second, channels)
            if found is not None and shapes.get(found[1]) == shape:
                bias_node, skip, bias = found
                data = first
                removed.add(id(bias_node))
                break
        keep_sum = readers.get(add.output[0], 0) > 1
        name = norm.name or norm.output[0]
        as_3d = len(shape) != 3
        nodes = []

        def view(tensor: str, dims: list[int], out: str) -> str:
            target = f"{name}/skip_shape_{len(dims)}d"
            if target not in initializers:
                initializers[target] = numpy_helper.from_array(np.array(dims, np.int64), target)
                graph.initializer.append(initializers[target])
            nodes.append(helper.make_node("Reshape", [tensor, target], [out], name=f"{name}/Reshape_{len(nodes)}"))
            return out

        flat, full = [-1, math.prod(shape[1:-1]), channels], [-1, *shape[1:]]
        inputs = [view(data, flat, f"{name}/input_3d"), view(skip, flat, f"{name}/skip_3d")] if as_3d else [data, skip]
        inputs += [norm.input[1], norm.input[2] if len(norm.input) > 2 else "", bias or ""]
        while not inputs[-1]:
            inputs.pop()
        outputs = [f"{norm.output[0]}::3d" if as_3d else norm.output[0]]
        if keep_sum:
            outputs += ["", "", f"{add.output[0]}::3d" if as_3d else add.output[0]]
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        nodes.append(helper.make_node("SkipLayerNormalization", inputs, outputs, name=f"{name}/skip", domain="com.microsoft",
                                      epsilon=epsilon))
        if as_3d:
            for fused_out, wanted in zip(outputs[::3], (norm.output[0], add.output[0])):
                view(fused_out, full, wanted)
        removed.update({id(add), id(norm)})
        replacement[id(add)] = nodes
        fused += 1

    kept = []
    for node in graph.node:
        kept.extend(replacement.get(id(node), []))
        if id(node) not in removed:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    if fused and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    return model, fused
