"""The floor under a graph as ONNX Runtime runs it: one kernel a node, at a GPU's measured rates.

ONNX Runtime first optimises the graph (Gelu, FusedMatMul and Gemm fusions); each node of what it
then runs is one or a few kernels, which read their inputs from GPU memory and write their outputs
back. For every such node this counts its matmul FLOPs and those bytes (each input read once, each
output written once; reshapes are free). No kernel for that node runs faster than
    max(FLOPs / matmul rate, bytes / memory bandwidth),
and the sum over nodes is the fastest the graph can run node by node. FLOPs / rate alone is the floor
of a graph fused so far that only its matmuls count. Measured time over the node floor is kernel
inefficiency (and launch gaps); the node floor over the FLOP floor is what fusing nodes, as TensorRT
does, can win at most. Tensors small enough to stay in the GPU's L2 cache cost less than counted
here, so for nodes of such tensors the floor is set high.

The rates are those measured on this workplace's machines (../.library/device/KINDS.md): an 8192^3
bf16 matmul and a device-to-device copy (bytes read plus written). Shapes are ONNX Runtime's own, at
the batch asked for. An FP32 graph can be counted as its FP16 twin (`--float-bytes 2`): the FP16
export has the same nodes and a few Casts, but ONNX Runtime's CPU provider, which has few FP16
kernels, would wrap the FP16 graph in its own Casts.

    python benchmarks/roofline.py /tmp/cpunew/fp32/model.onnx /tmp/cpunew/fp32-ort-attention/model.onnx \\
        --float-bytes 2 --batch 1,8 --gpu h200 --out benchmarks/results/roofline_fullsize.md
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_plot, write_report  # noqa: E402
from gpu_profile import node_regions  # noqa: E402

# Measured ceilings (KINDS.md): bf16 matmul TFLOP/s on random data, device-to-device copy TB/s.
GPUS: dict[str, tuple[float, float]] = {
    "h200": (788.0, 4.3),
    "h100": (798.0, 3.0),
}
FREE_OPS = frozenset({"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Shape", "Constant"})  # views
FLOAT_TYPES = frozenset({1, 10, 16})  # TensorProto FLOAT, FLOAT16, BFLOAT16
ELEMENTWISE_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Where", "Cast", "Erf", "Gelu", "Relu", "Sigmoid", "Clip",
                             "MemcpyFromHost", "MemcpyToHost"})


@dataclass
class NodeCost:
    name: str
    op: str
    region: str
    flops: float  # matmul FLOPs (2 a multiply-add)
    bytes: float  # inputs read once plus outputs written once

    def floor_s(self, flop_rate: float, bandwidth: float) -> float:
        return max(self.flops / flop_rate, self.bytes / bandwidth)


def declare_shapes(model: Path, out: Path) -> Path:
    """`model` with every tensor's shape that ONNX's shape inference finds declared, saved at `out`. ONNX Runtime
    saves a tensor's shape with its optimised graph only where the graph it read declared one."""
    import onnx

    onnx.shape_inference.infer_shapes_path(str(model), str(out))
    return out


def optimized_graph(model: Path, batch: int, out: Path) -> Path:
    """ONNX Runtime's optimised graph (extended level, the CPU provider; no layout changes) saved at `out`."""
    import onnxruntime as ort

    from ssprompt.runtime.contract import BATCH_AXIS

    declared = declare_shapes(model, out.with_name(f"declared-{out.name}"))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out)
    options.add_free_dimension_override_by_name(BATCH_AXIS, batch)
    ort.InferenceSession(str(declared), options, providers=["CPUExecutionProvider"])
    declared.unlink()
    return out


def _complete(model, shapes: dict) -> None:
    """Add the shapes ONNX Runtime saved without fixed sizes or not at all (mostly of tensors its optimizer made:
    outputs of the Reshape, Gemm, Split, Squeeze, Concat, Transpose and elementwise nodes it makes or rewires, and of
    the com.microsoft nodes `ssp-export --ort-fused` writes), in graph (topological) order."""
    import numpy as np
    from onnx import numpy_helper

    initializers = {init.name: init for init in model.graph.initializer}

    def constant(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    for node in model.graph.node:
        if all(name in shapes for name in node.output if name):
            continue
        dims, elem = shapes[node.input[0]]
        axis = _attribute(node, "axis")
        if node.op_type == "Reshape":
            target = [d if d != 0 else dims[i] for i, d in enumerate(int(v) for v in constant(node.input[1]))]
            if -1 in target:
                target[target.index(-1)] = math.prod(dims) // -math.prod(target)
            outs = [tuple(target)]
        elif node.op_type == "Gemm":
            rows = dims[1] if _attribute(node, "transA") else dims[0]
            weight = shapes[node.input[1]][0]
            outs = [(rows, weight[0] if _attribute(node, "transB") else weight[1])]
        elif node.op_type == "Split":
            sizes = [int(v) for v in constant(node.input[1])] if len(node.input) > 1 and node.input[1] else \
                [dims[axis] // len(node.output)] * len(node.output)
            outs = [dims[:axis % len(dims)] + (size,) + dims[axis % len(dims) + 1:] for size in sizes]
        elif node.op_type == "Squeeze":
            axes = {int(a) % len(dims) for a in constant(node.input[1])}
            outs = [tuple(d for i, d in enumerate(dims) if i not in axes)]
        elif node.op_type == "Concat":
            parts = [shapes[name][0] for name in node.input]
            axis %= len(dims)
            outs = [dims[:axis] + (sum(part[axis] for part in parts),) + dims[axis + 1:]]
        elif node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), range(len(dims))[::-1])
            outs = [tuple(dims[i] for i in perm)]
        elif node.op_type == "SkipLayerNormalization":  # com.microsoft: the normalised sum and the sum, input-shaped
            outs = [dims] * len(node.output)
        elif node.op_type == "MultiHeadAttention":  # com.microsoft: (B, Lq) of the queries, the values' width
            outs = [dims[:2] + shapes[node.input[2]][0][-1:]]
        elif node.op_type in ELEMENTWISE_OPS:
            outs = [tuple(np.broadcast_shapes(*(shapes[name][0] for name in node.input if name)))]
        else:
            raise ValueError(f"no fixed shape for the outputs of {node.op_type} node {node.name}; "
                             "cannot count its bytes")
        shapes.update({name: (out, elem) for name, out in zip(node.output, outs)})


def _shapes(model) -> dict[str, tuple[tuple[int, ...], int]]:
    """name -> (shape, element type) of every tensor: ONNX Runtime's own inference, which it saves with the
    optimised graph (the batch axis fixed by then), completed where its optimizer made the tensor."""
    shapes = {}
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):  # else: _complete
            shapes[value.name] = (tuple(d.dim_value for d in tensor.shape.dim), tensor.elem_type)
    for init in model.graph.initializer:
        shapes[init.name] = (tuple(init.dims), init.data_type)
    _complete(model, shapes)
    return shapes


def _fused_operand(dims: tuple[int, ...], trans_batch: int, trans: int) -> tuple[int, ...]:
    """A FusedMatMul operand's shape as multiplied: transBatch moves the first axis in front of the last but one
    (a fused Transpose (1, ..., n-2, 0, n-1)); trans swaps the last two."""
    if trans_batch:
        dims = dims[1:-1] + dims[:1] + dims[-1:]
    return dims[:-2] + dims[-2:][::-1] if trans else dims


def _attribute(node, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def matmul_flops(node, shapes: dict) -> float:
    """2 x multiply-adds of the node's matrix products; 0 for ops that have none."""
    def shape(i: int) -> tuple[int, ...]:
        return shapes[node.input[i]][0]

    out = shapes[node.output[0]][0] if node.output and node.output[0] in shapes else ()
    if node.op_type in ("MatMul", "FusedMatMul"):
        a = _fused_operand(shape(0), _attribute(node, "transBatchA"), _attribute(node, "transA"))
        return 2.0 * math.prod(out) * a[-1]
    if node.op_type == "Gemm":
        a = shape(0)
        return 2.0 * math.prod(out) * (a[0] if _attribute(node, "transA") else a[1])
    if node.op_type == "Conv":
        return 2.0 * math.prod(out) * math.prod(shape(1)[1:])  # weight (Cout, Cin / groups, *kernel)
    if node.op_type == "ConvTranspose":
        return 2.0 * math.prod(shape(0)) * math.prod(shape(1)[1:])  # weight (Cin, Cout / groups, *kernel)
    if node.op_type == "Einsum":
        equation = next(a.s.decode() for a in node.attribute if a.name == "equation").replace(" ", "")
        sizes = {}
        for i, term in enumerate(equation.split("->")[0].split(",")):
            sizes.update(zip(term, shape(i)))
        return 2.0 * math.prod(sizes.values())  # every index once: the contraction's multiply-adds
    if node.op_type == "MultiHeadAttention":  # com.microsoft, (B, L, H*D) inputs: q.k and the weighted sum of v
        (b, lq, dqk), (lk, dv) = shape(0), (shape(1)[1], shape(2)[-1])
        return 2.0 * b * lq * lk * (dqk + dv)
    return 0.0


def node_costs(optimized: Path, float_bytes: int | None = None) -> list[NodeCost]:
    """Cost of every node of an optimised graph (saved by `optimized_graph`); floats at `float_bytes` where given."""
    import onnx
    from onnx import helper

    model = onnx.load(str(optimized))
    shapes = _shapes(model)
    regions = node_regions(optimized)

    def nbytes(name: str) -> float:
        dims, elem = shapes[name]
        size = float_bytes if float_bytes and elem in FLOAT_TYPES else helper.tensor_dtype_to_np_dtype(elem).itemsize
        return float(math.prod(dims)) * size

    costs = []
    for node in model.graph.node:
        moved = 0.0 if node.op_type in FREE_OPS else sum(nbytes(t) for t in {*node.input, *node.output} if t)
        costs.append(NodeCost(node.name, node.op_type, regions[node.name], matmul_flops(node, shapes), moved))
    return costs


def summary(costs: list[NodeCost], key, flop_rate: float, bandwidth: float) -> dict:
    """key(cost) -> [nodes, FLOPs, bytes, node floor s, memory-bound floor s]."""
    groups: dict = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
    for cost in costs:
        group = groups[key(cost)]
        floor = cost.floor_s(flop_rate, bandwidth)
        group[0] += cost.op not in FREE_OPS
        group[1] += cost.flops
        group[2] += cost.bytes
        group[3] += floor
        group[4] += floor if cost.bytes / bandwidth >= cost.flops / flop_rate else 0.0
    return dict(groups)


def _graph_name(model: Path) -> str:
    return f"{model.parent.name}/{model.name}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", type=Path, nargs="+", help="exported model.onnx files; the first is broken down")
    parser.add_argument("--batch", default="1,8", help="batch sizes; the last is broken down")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h200", help="whose measured ceilings to use")
    parser.add_argument("--float-bytes", type=int, choices=(2, 4), help="count float tensors at this size")
    parser.add_argument("--top", type=int, default=15, help="heaviest nodes to list")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/roofline_fullsize.md"))
    args = parser.parse_args()

    tflops, tbps = GPUS[args.gpu]
    rate, bandwidth = tflops * 1e12, tbps * 1e12
    batches = [int(b) for b in args.batch.split(",")]
    totals, costs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for b in batches:
                print(f"optimising {model} at batch {b}", flush=True)
                costs = node_costs(optimized_graph(model, b, Path(tmp) / "optimized.onnx"), args.float_bytes)
                flops, moved = sum(c.flops for c in costs), sum(c.bytes for c in costs)
                node_floor = sum(c.floor_s(rate, bandwidth) for c in costs)
                totals.append([_graph_name(model), str(b), f"{flops / b / 1e9:.1f}", f"{moved / b / 1e9:.2f}",
                               f"{1e3 * flops / rate:.3f}", f"{1e3 * node_floor:.3f}", f"{b / node_floor:.0f}"])
                if (model, b) == (args.models[0], batches[-1]):
                    broken_down, b_down, floor_down = costs, b, node_floor

    def rows(groups: dict, limit: int | None = None) -> list[list[str]]:
        ordered = sorted(groups.items(), key=lambda item: -item[1][3])[:limit]
        return [[k, str(n), f"{f / b_down / 1e9:.1f}", f"{m / b_down / 1e9:.2f}", f"{1e3 * s:.2f}",
                 f"{100 * s / floor_down:.1f}", f"{100 * mem / s:.0f}" if s else "0"]
                for k, (n, f, m, s, mem) in ordered]

    columns = ["nodes", "GFLOP per image", "GB moved per image", f"floor ms (batch {b_down})", "% of floor",
               "% memory-bound"]
    by_region = summary(broken_down, lambda c: c.region, rate, bandwidth)
    by_op = summary(broken_down, lambda c: c.op, rate, bandwidth)
    heaviest = sorted(broken_down, key=lambda c: -c.floor_s(rate, bandwidth))[:args.top]
    precision = (f"float tensors counted at {args.float_bytes} bytes" if args.float_bytes
                 else "tensors at their own types")
    first = _graph_name(args.models[0]) + (" (FP16 sizes)" if args.float_bytes == 2 else "")
    lines = header(f"The floor under the exported graph, node by node, on an {args.gpu.upper()}") + [
        "",
        f"Ceilings: {tflops:.0f} TFLOP/s matmul, {tbps} TB/s memory (measured, ../.library/device/KINDS.md). "
        f"ONNX Runtime's optimised graph (extended level), {precision}. A node's floor is "
        "max(FLOPs / rate, bytes / bandwidth); the FLOP floor is all FLOPs / rate. Only matmul FLOPs are counted.",
        "",
        *table_lines(["graph", "batch", "GFLOP per image", "GB moved per image", "FLOP floor ms", "node floor ms",
                      "images/s at the node floor"], totals),
        "",
        f"{first} at batch {b_down} by graph region and by op type; 'memory-bound' is the share of the floor in "
        "nodes whose bytes, not FLOPs, set it.",
        "",
        *table_lines(["graph region", *columns], rows(by_region)),
        "",
        *table_lines(["op type", *columns], rows(by_op, 15)),
        "",
        f"The {args.top} nodes with the highest floors:",
        "",
        *table_lines(["node", "op type", "graph region", "GFLOP", "GB moved", f"floor ms (batch {b_down})"],
                     [[c.name, c.op, c.region, f"{c.flops / 1e9:.1f}", f"{c.bytes / 1e9:.3f}",
                       f"{1e3 * c.floor_s(rate, bandwidth):.3f}"] for c in heaviest]),
    ]
    write_report(args.out, lines)

    def draw(ax) -> None:
        names = sorted(by_region, key=lambda k: by_region[k][3])
        memory = [1e3 * by_region[k][4] for k in names]
        compute = [1e3 * (by_region[k][3] - by_region[k][4]) for k in names]
        ax.barh(names, compute, label="matmul-bound nodes")
        ax.barh(names, memory, left=compute, label="memory-bound nodes")
        ax.set_xlabel(f"floor, ms per batch of {b_down}")
        ax.legend(fontsize=8)

    write_plot(args.out.with_suffix(".png"), draw, f"{first}, node by node on an {args.gpu.upper()}: "
               f"{1e3 * floor_down:.1f} ms per {b_down} images ({b_down / floor_down:.0f} images/s)", size=(8, 3.2))


if __name__ == "__main__":
    main()
