"""Writes tests/export/tensorrt_onnx_ops.json: the ONNX operators TensorRT 10's ONNX parser supports, from
onnx-tensorrt's docs/operators.md, with the restrictions that tests/export/test_tensorrt_ops.py checks by rule.

    git -C onnx-tensorrt show 10.0-GA:docs/operators.md > operators.md
    python dev/tensorrt_onnx_ops.py operators.md --commit $(git -C onnx-tensorrt rev-parse 10.0-GA) \
        --date $(git -C onnx-tensorrt log -1 --format=%cs 10.0-GA) --branch 10.0-GA

10.0-GA is the oldest TensorRT 10 the `tensorrt` extra allows, so its list is the one a graph must meet.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "export" / "tensorrt_onnx_ops.json"

# The doc's type names as ONNX TensorProto names ("INF64" is the doc's own typo, in ConstantOfShape from 10.1 on).
TYPE_NAMES = {"FP32": "FLOAT", "FP16": "FLOAT16", "BF16": "BFLOAT16", "FP8": "FLOAT8E4M3FN", "INT8": "INT8", "INT4": "INT4",
              "INT32": "INT32", "INT64": "INT64", "INF64": "INT64", "UINT8": "UINT8", "BOOL": "BOOL", "DOUBLE": "DOUBLE"}

_POOL = {"kernel_ranks": [2, 3], "attributes_all_ones": ["dilations"]}
_REDUCE_AXES = {"constant_inputs": [1]}
# Each doc restriction as rules a graph can be checked against (by the test's checker); an op whose restriction has
# no rule here fails the check until one is written.
RULES: dict[str, dict] = {
    "AveragePool": _POOL,
    "LpPool": {"attributes_all_ones": ["dilations"]},
    "MaxPool": {**_POOL, "max_outputs": 1},
    "CumSum": {"constant_inputs": [1]},
    "OneHot": {"constant_inputs": [1]},
    "Pad": {"constant_inputs": [3]},
    "Slice": {"constant_inputs": [3]},
    "Squeeze": {"constant_inputs": [1]},
    "Unsqueeze": {"constant_inputs": [1]},
    "ScatterND": {"attribute_values": {"reduction": ["none"]}},
    "Constant": {"attributes_absent": ["sparse_value", "value_string", "value_strings"]},
    "Resize": {"attribute_values": {
        "coordinate_transformation_mode": ["half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                           "align_corners"],
        "mode": ["nearest", "linear"],
        "nearest_mode": ["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"],
        "keep_aspect_ratio_policy": ["stretch"],
        "antialias": [0]}, "attributes_iota": ["axes"]},
    **{op: _REDUCE_AXES for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                                   "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
    **{op: {} for op in ("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike")},  # seed is ignored
}


def parse(markdown: str) -> tuple[dict, dict]:
    """(supported ops, unsupported ops) of the doc's support matrix."""
    supported, unsupported = {}, {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 2 or cells[1] not in ("Y", "N") or not re.fullmatch(r"[A-Za-z0-9]+", cells[0]):
            continue
        op = cells[0]
        if cells[1] == "N":
            unsupported[op] = {}
            continue
        types = sorted({TYPE_NAMES[t] for t in re.split(r"[,\s]+", cells[2] if len(cells) > 2 else "") if t})
        restriction = " ".join(cells[3].split()) if len(cells) > 3 else ""
        entry: dict = {"types": types}
        if restriction:
            entry["restriction"] = restriction
        if op in RULES:
            entry["rules"] = RULES[op]
        supported[op] = entry
    return supported, unsupported


def _dumps(data: dict) -> str:
    """JSON with one line per operator, so that a change to the list reads as a change to its operators."""
    def block(value: dict, indent: str) -> str:
        return "{\n" + ",\n".join(f"{indent} {json.dumps(k)}: {json.dumps(v)}" for k, v in value.items()) + f"\n{indent}}}"
    fields = [f' {json.dumps(k)}: {block(v, " ") if k == "supported" else json.dumps(v)}' for k, v in data.items()]
    return "{\n" + ",\n".join(fields) + "\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("markdown", type=Path, help="onnx-tensorrt's docs/operators.md")
    parser.add_argument("--commit", required=True)
    parser.add_argument("--date", required=True, help="the commit's date")
    parser.add_argument("--branch", required=True)
    args = parser.parse_args()
    text = args.markdown.read_text()
    supported, unsupported = parse(text)
    opsets = re.search(r"opset (\d+) to opset (\d+)", text)
    notes = [" ".join(line.lstrip("> ").split()) for line in text.splitlines() if line.startswith("> Note")]
    data = {
        "source": f"https://github.com/onnx/onnx-tensorrt/blob/{args.commit}/docs/operators.md",
        "branch": args.branch,
        "commit": args.commit,
        "date": args.date,
        "opsets": [int(opsets.group(1)), int(opsets.group(2))] if opsets else None,
        "notes": notes,
        # from the notes: UINT8 only at the network's inputs and outputs (so only Cast reads or writes it)
        "io_only_types": ["UINT8"],
        "supported": supported,
        "unsupported": sorted(unsupported),
    }
    OUT.write_text(_dumps(data))
    print(f"wrote {OUT}: {len(supported)} supported, {len(unsupported)} unsupported operators")


if __name__ == "__main__":
    main()
