"""fuse_skip_layer_norms writes residual Add (+ bias Add) -> LayerNormalization as SkipLayerNormalization, with
the same outputs, and leaves additions that broadcast alone."""

import numpy as np
import pytest

from ssprompt.export.ort_fusion import fuse_skip_layer_norms

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _model():
    """x (B, 4, 5, 8), y (B, 4, 5, 8), z (B, 1, 5, 8):
    s = x + (y + bias); n1 = LN(s); out1 = n1 + s (s read again: the fused node must still write it);
    n2 = LN(x + z) (z broadcasts: not fusable)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.normal(size=8).astype(np.float32), name) for name in ("bias", "gamma", "beta")]
    nodes = [
        helper.make_node("Add", ["y", "bias"], ["y_bias"], name="/blocks.0/bias_add"),
        helper.make_node("Add", ["x", "y_bias"], ["s"], name="/blocks.0/residual"),
        helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["n1"], axis=-1, epsilon=1e-6, name="/blocks.0/norm"),
        helper.make_node("Add", ["n1", "s"], ["out1"], name="/blocks.0/next"),
        helper.make_node("Add", ["x", "z"], ["xz"], name="/blocks.1/broadcast"),
        helper.make_node("LayerNormalization", ["xz", "gamma", "beta"], ["out2"], axis=-1, name="/blocks.1/norm"),
    ]
    full = ["B", 4, 5, 8]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, full),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, full),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["B", 1, 5, 8])],
                              [helper.make_tensor_value_info("out1", TensorProto.FLOAT, full),
                               helper.make_tensor_value_info("out2", TensorProto.FLOAT, full)], init)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model, feeds):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # what the file says, not ORT's fusions
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def test_residual_norm_becomes_one_skip_layer_norm_with_the_same_outputs():
    model = _model()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.normal(size=(3, 4, 5, 8)).astype(np.float32), "y": rng.normal(size=(3, 4, 5, 8)).astype(np.float32),
             "z": rng.normal(size=(3, 1, 5, 8)).astype(np.float32)}
    fused, count = fuse_skip_layer_norms(model)
    ops = [n.op_type for n in fused.graph.node]
    assert count == 1
    assert ops.count("SkipLayerNormalization") == 1 and ops.count("LayerNormalization") == 1  # the broadcast one stays
    skip = next(n for n in fused.graph.node if n.op_type == "SkipLayerNormalization")
    assert skip.input[4] == "bias" and skip.output[3]  # the bias Add folded in; the sum still written for its reader
    assert ops.count("Add") == 2  # out1's and the broadcast one: the residual and the bias Adds are gone
    for want, got in zip(_run(model, feeds), _run(fused, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert [n.op_type for n in model.graph.node].count("SkipLayerNormalization") == 0  # the input model is untouched
