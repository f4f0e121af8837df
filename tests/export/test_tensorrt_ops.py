"""Every op, data type and restricted attribute of the default FP32 and FP16 graphs is one that TensorRT 10's ONNX
parser supports, by onnx-tensorrt's own list (tensorrt_onnx_ops.json beside this file, written by
dev/tensorrt_onnx_ops.py from docs/operators.md of the 10.0-GA branch; source, commit and date inside): a graph
change that TensorRT could not parse fails here, where TensorRT cannot be installed."""

import json
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

OPS = json.loads(Path(__file__).with_name("tensorrt_onnx_ops.json").read_text())
# Where the doc's type column applies: the input (or output) that carries the op's data type T; by default input 0.
TYPED_INPUTS = {"Where": (1, 2)}
TYPED_OUTPUTS = {"Cast": (0,), "CastLike": (0,), "Constant": (0,), "ConstantOfShape": (0,)}


def tensorrt_problems(model: "onnx.ModelProto") -> list[str]:
    """One line for each node, type or attribute of `model` that the list says TensorRT 10's parser refuses."""
    problems = []
    low, high = OPS["opsets"]
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not low <= opset.version <= high:
            problems.append(f"opset {opset.version} outside TensorRT's {low}..{high}")
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    types.update({t.name: t.data_type for t in graph.initializer})
    constants = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    boundary = {v.name for v in [*graph.input, *graph.output]}
    io_only = {getattr(TensorProto, name) for name in OPS["io_only_types"]}
    for node in graph.node:
        where = f"{node.op_type} node {node.name!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{where}: domain {node.domain}, not standard ONNX")
            continue
        entry = OPS["supported"].get(node.op_type)
        if entry is None:
            problems.append(f"{where}: not supported by TensorRT's ONNX parser")
            continue
        typed = [node.input[i] for i in TYPED_INPUTS.get(node.op_type, (0,)) if i < len(node.input)]
        typed += [node.output[i] for i in TYPED_OUTPUTS.get(node.op_type, ())]
        for name in filter(None, typed):
            type_name = TensorProto.DataType.Name(types.get(name, TensorProto.UNDEFINED))
            if type_name not in entry["types"]:
                problems.append(f"{where}: {name} is {type_name}; TensorRT takes {', '.join(entry['types'])}")
        for name in [*node.input, *node.output]:
            if name and name not in boundary and types.get(name) in io_only:
                problems.append(f"{where}: {name} is {TensorProto.DataType.Name(types[name])} inside the network "
                                "(TensorRT takes it only as a network input or output)")
        problems += [f"{where}: {p}" for p in _rule_problems(node, entry, constants)]
    return problems


def _rule_problems(node: "onnx.NodeProto", entry: dict, constants: set[str]) -> list[str]:
    if "restriction" in entry and "rules" not in entry:
        return [f"restricted ({entry['restriction']}) and no rule checks it: add one to dev/tensorrt_onnx_ops.py"]
    rules = entry.get("rules", {})
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attributes = {k: v.decode() if isinstance(v, bytes) else v for k, v in attributes.items()}
    problems = []
    for index in rules.get("constant_inputs", []):
        if index < len(node.input) and node.input[index] and node.input[index] not in constants:
            problems.append(f"input {index} must be an initializer or constant")
    for name, allowed in rules.get("attribute_values", {}).items():
        if name in attributes and attributes[name] not in allowed:
            problems.append(f"{name}={attributes[name]!r}; TensorRT takes {allowed}")
    for name in rules.get("attributes_all_ones", []):
        if any(v != 1 for v in attributes.get(name, [])):
            problems.append(f"{name} must be all ones")
    for name in rules.get("attributes_iota", []):
        if name in attributes and list(attributes[name]) != list(range(len(attributes[name]))):
            problems.append(f"{name} must be 0, 1, ...")
    problems += [f"attribute {name} is not supported" for name in rules.get("attributes_absent", []) if name in attributes]
    if "kernel_ranks" in rules and len(attributes.get("kernel_shape", [])) not in rules["kernel_ranks"]:
        problems.append(f"kernel_shape {attributes.get('kernel_shape')}: only {rules['kernel_ranks']}-D pooling")
    if len([o for o in node.output if o]) > rules.get("max_outputs", len(node.output)):
        problems.append(f"only {rules['max_outputs']} output(s) supported")
    return problems


@pytest.fixture(scope="module")
def default_graphs(tiny_backbones) -> dict:
    """The default layout's graphs of a tiny model, as ssp-export writes them: FP32, and FP16 with its KEEP_FP32."""
    from ssprompt.export.fp16 import KEEP_FP32, to_fp16
    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.onnx_export import export_onnx
    from ssprompt.train.config import ModelConfig
    from ssprompt.train.model import SSPrompt

    model = SSPrompt(tiny_backbones, ["a", "b", "c"], ModelConfig(num_prompts=16), default_semantic=torch.randn(3, 64)).eval()
    fp32 = export_onnx(ExportGraph(model))
    return {"fp32": fp32, "fp16": to_fp16(fp32, KEEP_FP32)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_default_graph_uses_only_what_tensorrt_10_parses(default_graphs, precision):
    model = default_graphs[precision]
    assert {n.op_type for n in model.graph.node} >= {"MatMul", "LayerNormalization", "Resize", "Softmax"}  # the real graph
    assert tensorrt_problems(model) == []


def _planted(node: "onnx.NodeProto", inputs: list, outputs: list, initializers: list = ()) -> "onnx.ModelProto":
    graph = helper.make_graph([node], "planted", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_planted_unsupported_op_is_reported(default_graphs):
    model = onnx.ModelProto()
    model.CopyFrom(default_graphs["fp32"])
    output = model.graph.output[1].name  # confidence, (B, S, S) float32
    model.graph.node.append(helper.make_node("Unique", [output], ["unique_values"], name="planted_unique"))
    assert tensorrt_problems(model) == ["Unique node 'planted_unique': not supported by TensorRT's ONNX parser"]


def test_ort_attention_is_reported_as_not_standard_onnx():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])
    node = helper.make_node("MultiHeadAttention", ["x", "x", "x"], ["y"], name="mha", domain="com.microsoft", num_heads=2)
    model = helper.make_graph([node], "planted", [x], [y])
    model = helper.make_model(model, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    assert tensorrt_problems(model) == ["MultiHeadAttention node 'mha': domain com.microsoft, not standard ONNX"]


def test_a_uint8_tensor_inside_the_network_is_reported():
    images = helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 8, 8, 3])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 8, 8])
    nodes = [helper.make_node("Transpose", ["images"], ["nchw"], name="t", perm=[0, 3, 1, 2]),
             helper.make_node("Cast", ["nchw"], ["out"], name="c", to=TensorProto.FLOAT)]
    model = helper.make_model(helper.make_graph(nodes, "planted", [images], [out]), opset_imports=[helper.make_opsetid("", 17)])
    problems = tensorrt_problems(model)
    assert problems[0].startswith("Transpose node 't': images is UINT8; TensorRT takes BFLOAT16, BOOL, FLOAT")
    assert "nchw is UINT8 inside the network" in problems[1] and "Cast node 'c': nchw is UINT8 inside" in problems[2]


@pytest.mark.parametrize("attribute, value, expected", [
    ("mode", "cubic", "Resize node 'r': mode='cubic'; TensorRT takes ['nearest', 'linear']"),
    ("antialias", 1, "Resize node 'r': antialias=1; TensorRT takes [0]"),
])
def test_a_restricted_attribute_is_reported(attribute, value, expected):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, 8, 8])
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="r", **{attribute: value})
    model = helper.make_model(helper.make_graph([node], "planted", [x], [y], [sizes]), opset_imports=[helper.make_opsetid("", 18)])
    assert tensorrt_problems(model) == [expected]


def test_axes_computed_at_run_time_are_reported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    node = helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="s", keepdims=1)
    model = helper.make_model(helper.make_graph([node], "planted", [x, axes], [y]), opset_imports=[helper.make_opsetid("", 17)])
    assert tensorrt_problems(model) == ["ReduceSum node 's': input 1 must be an initializer or constant"]
