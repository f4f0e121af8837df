"""export/fp16.py: the project's own FP16 pass (no onnxruntime), and FP16 export under every allowed onnxruntime."""

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ssprompt.export.fp16 import count_casts, to_fp16

ort = pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[2]
# Besides the venv's own onnxruntime (the newest the extras allow, as pip resolved it): the oldest the extras
# allow, and 1.31.1, whose float16 helper broke the previous converter on this graph.
OTHER_ONNXRUNTIMES = ("1.20.1", "1.31.1")


def _onnxruntime_site(version: str) -> Path:
    """onnxruntime==`version` installed apart (pip --target, kept under .venv for later runs)."""
    site = REPO / ".venv" / f"onnxruntime-{version}"
    if not (site / "onnxruntime").is_dir():
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                               f"onnxruntime=={version}"], capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            pytest.skip(f"onnxruntime {version} could not be installed here: {done.stderr.strip().splitlines()[-1:]}")
    return site


def _shared_weight_model() -> onnx.ModelProto:
    """y = LayerNorm(x; w, b) + LayerNorm(x @ w_sq; w, b) @ w_sq, one weight read by three nodes."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")
    w_sq = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32) * 0.3, "w_sq")
    nodes = [
        helper.make_node("LayerNormalization", ["x", "w", "b"], ["ln1"], axis=-1),
        helper.make_node("MatMul", ["x", "w_sq"], ["xw"]),
        helper.make_node("LayerNormalization", ["xw", "w", "b"], ["ln2"], axis=-1),
        helper.make_node("MatMul", ["ln2", "w_sq"], ["ln2w"]),
        helper.make_node("Add", ["ln1", "ln2w"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])], [w, b, w_sq])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _producers(model: onnx.ModelProto) -> Counter:
    return Counter(name for node in model.graph.node for name in node.output)


def test_a_weight_read_by_kept_and_converted_nodes_stays_in_ssa_form():
    model = _shared_weight_model()
    half = to_fp16(model, keep_fp32=("LayerNormalization",))
    assert max(_producers(half).values()) == 1  # every tensor written once: the bug of onnxruntime 1.31's converter
    onnx.checker.check_model(half, full_check=True)
    x = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(half, x), _run(model, x), atol=2e-2)
    types = {t.name: t.data_type for t in half.graph.initializer}
    assert types["w"] == TensorProto.FLOAT and types["w_sq::fp16"] == TensorProto.FLOAT16  # LayerNorm reads w in FP32


def test_kept_op_types_read_float32_and_everything_else_float16():
    half = to_fp16(_shared_weight_model(), keep_fp32=("LayerNormalization",))
    inferred = onnx.shape_inference.infer_shapes(half)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({t.name: t.data_type for t in half.graph.initializer})
    for node in half.graph.node:
        if node.op_type == "LayerNormalization":
            assert [types[i] for i in node.input] == [TensorProto.FLOAT] * 3
        elif node.op_type == "MatMul":
            assert [types[i] for i in node.input] == [TensorProto.FLOAT16] * 2
    assert half.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # graph I/O stays FP32


def test_casts_only_where_the_type_changes():
    half = to_fp16(_shared_weight_model(), keep_fp32=("LayerNormalization",))
    # x (FP32 input) to FP16 for its MatMul; xw up for LayerNorm; ln1 and ln2 down for Add and MatMul; y back up.
    assert count_casts(half) == 5


def test_values_beyond_the_float16_range_are_clamped_not_infinite():
    big = numpy_helper.from_array(np.array([1e6, -1e6, 1.0], np.float32), "big")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "big"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])], [big])
    half = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), keep_fp32=())
    values = numpy_helper.to_array(next(t for t in half.graph.initializer if t.name.startswith("big")))
    assert values.dtype == np.float16 and values.tolist() == [65504.0, -65504.0, 1.0]


def test_the_converter_does_not_import_onnxruntime():
    code = "import sys, ssprompt.export.fp16, ssprompt.export.onnx_export; print('onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("version", [None, *OTHER_ONNXRUNTIMES], ids=lambda v: v or "venv")
def test_ssp_export_fp16_works_under_each_allowed_onnxruntime(version, demo_run, tmp_path):
    """`ssp-export --fp16` with the parity gate under each onnxruntime (put first on the path)."""
    env = dict(os.environ)
    if version is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(_onnxruntime_site(version)), env.get("PYTHONPATH", "")])
    code = ("import onnxruntime, sys; print(onnxruntime.__version__, file=sys.stderr); "
            "from ssprompt.export.cli import export_command; export_command()")
    done = subprocess.run([sys.executable, "-c", code, "--prompts", str(demo_run[1]), "--out", str(tmp_path / "x"), "--fp16"],
                          capture_output=True, text=True, env=env, timeout=600)
    ran = done.stderr.splitlines()[0] if done.stderr else "?"
    assert done.returncode == 0, f"onnxruntime {ran}: {done.stderr[-1500:]}"
    if version is not None:
        assert ran == version
    assert "fp16 parity" in done.stdout and (tmp_path / "x" / "model.onnx").is_file()


def test_tensors_after_a_resize_get_their_casts():
    """Type inference needs the Resize's sizes to type its output; the pass must still cast what follows."""
    sizes = numpy_helper.from_array(np.array([1, 1, 4, 4], np.int64), "sizes")
    mean = numpy_helper.from_array(np.array(0.5, np.float32), "mean")
    nodes = [helper.make_node("Resize", ["x", "", "", "sizes"], ["big"], mode="linear"),
             helper.make_node("Sub", ["big", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "mean"], ["y"])]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])], [sizes, mean])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    for keep in [("Div",), ("Resize",), ()]:
        np.testing.assert_allclose(_run(to_fp16(model, keep), x), _run(model, x), atol=1e-2)


def test_constants_are_typed_for_each_reader_and_resize_scales_stay_float32():
    """A Constant read by a float16 Mul and by Resize's scales (float32 by the spec): each gets its own type."""
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
             helper.make_node("Constant", [], ["half"], value_float=0.5),
             helper.make_node("Resize", ["x", "", "k"], ["big"], mode="nearest"),
             helper.make_node("Mul", ["big", "half"], ["y0"]),
             helper.make_node("ReduceMean", ["k"], ["m"], keepdims=0),
             helper.make_node("Add", ["y0", "m"], ["y"])]
    graph = helper.make_graph(nodes, "constants", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    half = to_fp16(model, keep_fp32=())
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    scales = next(t for t in half.graph.initializer if t.name == resize.input[2])
    assert scales.data_type == TensorProto.FLOAT and not any(n.op_type == "Constant" for n in half.graph.node)
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(_run(half, x), _run(model, x), atol=1e-2)


def test_one_cast_serves_every_reader_of_a_tensor():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]), helper.make_node("MatMul", ["x", "w"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], [w])
    half = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), keep_fp32=())
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    assert [c.input[0] for c in casts].count("x") == 1  # two readers of x, one Cast
    matmuls = [n for n in half.graph.node if n.op_type == "MatMul"]
    assert matmuls[0].input[0] == matmuls[1].input[0] == casts[0].output[0]
