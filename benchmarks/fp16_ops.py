"""Which op types an FP16 graph must keep in FP32: parity of each choice, measured.

One FP32 graph is exported; each variant converts it with export.fp16.to_fp16 and a different
`keep_fp32` list, runs it in ONNX Runtime and compares it with the PyTorch FP32 graph on the
same images: label agreement, mask-logit error, confidence error, and the Cast nodes the choice
costs. Variants: everything in FP16; each op type that the previous converter kept in FP32, kept
alone; that whole previous list; and the list the project ships (export.fp16.KEEP_FP32).

    python benchmarks/fp16_ops.py --out benchmarks/results/fp16_ops_cpu.md
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, parity_cells, random_fullsize_pack, table_lines, write_disagreement_plot, write_report  # noqa: E402

# What the previous converter (onnxruntime's, with the project's block list) kept in FP32.
PREVIOUS_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare",
                 "Pow", "Sqrt", "Div", "Resize", "ArgMax", "ReduceMax")
COLUMNS = ["variant", "kept in FP32", "Cast nodes", "labels agree %", "mask logit mean abs error", "mask logit max abs error",
           "confidence max abs error", "passes the FP16 gate"]


def parse_args():
    parser = fullsize_parser(__doc__)
    parser.add_argument("--images", type=int, default=4, help="calibration images compared")
    parser.add_argument("--provider", default="auto", help="ONNX Runtime provider: auto, cpu, cuda")
    parser.add_argument("--device", default="cpu", help="torch device of the reference graph")
    parser.add_argument("--work", type=Path, help="reuse pack.pt and fp32/model.onnx from export_fullsize.py --work")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp16_ops_cpu.md"))
    return parser.parse_args()


def variants(op_types: set[str]) -> list[tuple[str, tuple[str, ...]]]:
    from ssprompt.export.fp16 import KEEP_FP32

    present = [op for op in PREVIOUS_FP32 if op in op_types]
    return ([("everything FP16", ())]
            + [(f"only {op} FP32", (op,)) for op in present]
            + [("previous list", tuple(present)), ("shipped (KEEP_FP32)", tuple(KEEP_FP32))])


def main() -> None:
    import onnx
    import torch

    from ssprompt.export.fp16 import count_casts, to_fp16
    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.onnx_export import export_onnx
    from ssprompt.export.parity import compare, onnx_outputs, torch_outputs
    from ssprompt.export.pipeline import calibration_images
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    args = parse_args()
    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        reuse = args.work is not None and (args.work / "pack.pt").is_file() and (args.work / "fp32" / "model.onnx").is_file()
        if reuse:
            pack = args.work / "pack.pt"
        else:
            print(f"building a random {args.sam} + {args.clip} pack and exporting the FP32 graph", flush=True)
            pack = random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, work / "pack.pt")
        model, _ = model_from_pack(load_pack(pack), device="cpu")
        graph = ExportGraph(model).eval()
        fp32 = onnx.load(str(args.work / "fp32" / "model.onnx")) if reuse else export_onnx(graph)
        images = calibration_images(model.image_size, model.pad_value, None, args.images)
        reference = torch_outputs(graph.to(args.device), images)
        del graph
        op_types = {node.op_type for node in fp32.graph.node}
        for name, keep in variants(op_types):
            path = work / "variant.onnx"
            converted = to_fp16(fp32, keep)
            onnx.save(converted, str(path))
            casts = count_casts(converted)
            del converted
            ours, provider = onnx_outputs(path, images, provider=args.provider)
            parity = compare(ours, reference, "fp16", provider)
            row = [name, ", ".join(keep) or "none", str(casts), *parity_cells(parity)]
            rows.append(row)
            print("  " + " | ".join(row), flush=True)

    title = f"FP16 parity by op type kept in FP32 ({args.sam} + {args.clip}, random weights)"
    lines = header(title) + [
        "",
        f"ONNX Runtime {provider} against the PyTorch FP32 graph ({args.device}), {args.images} generated scenes, "
        f"{args.prompts} prompts, {args.classes} classes; torch {torch.__version__}. The FP16 gate: labels agree on >= 99 %, "
        "mask-logit |err| mean <= 5e-2 and max <= 2. Every op type not listed as kept computes in FP16; graph I/O stays "
        "FP32. Random weights: a random decoder's mask logits are small (|logit| < 1), so absolute errors are small too.",
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)

    write_disagreement_plot(args.out.with_suffix(".png"), rows, title, 1.0)
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
