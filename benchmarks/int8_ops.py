"""Which op types an INT8 graph leaves in float: parity of each op type quantized alone, measured.

The world task's pretrained tiny model (the demo's training, benchmarks/common.py demo_world_pack) is
exported to FP32 once and calibrated once on the first --calib-images images of its training split
(export.int8.calibration_ranges); each variant then quantizes (onnxruntime.quantization, QDQ,
per-channel weights) a different set of op types with those ranges, runs in ONNX Runtime and is
compared with the PyTorch FP32 graph on the held-out split's images: label agreement, mask-logit
and confidence error, and the Q/DQ nodes the choice adds. Variants: every quantizable op type;
each alone; and what the project ships (everything but export.int8.KEEP_FLOAT).

    python benchmarks/int8_ops.py --work /tmp/int8ops --out benchmarks/results/int8_ops_cpu.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import demo_world_pack, header, parity_cells, table_lines, write_disagreement_plot, write_report  # noqa: E402

COLUMNS = ["variant", "op types quantized", "Q/DQ nodes", "labels agree %", "mask logit mean abs error",
           "mask logit max abs error", "confidence max abs error", "passes the INT8 gate"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, help="folder for the world task and its pack (reused when present)")
    parser.add_argument("--calib-images", type=int, default=16, help="training images calibrated on")
    parser.add_argument("--images", type=int, default=16, help="held-out images compared")
    parser.add_argument("--method", default="minmax", help="calibration method: minmax, entropy, percentile")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_ops_cpu.md"))
    return parser.parse_args()


def main() -> None:
    import onnx
    import torch

    from ssprompt.export.graph import ExportGraph
    from ssprompt.export.int8 import (KEEP_FLOAT, Int8Config, calibration_files, calibration_ranges, calibration_set,
                                      quantizable_op_types, quantize)
    from ssprompt.export.parity import THRESHOLDS, compare, onnx_outputs, torch_outputs
    from ssprompt.export.pipeline import export_pack
    from ssprompt.train.pack import load_pack
    from ssprompt.train.pipeline import model_from_pack

    args = parse_args()
    began = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pack_path = demo_world_pack(work)
        pack = load_pack(pack_path)
        model, _ = model_from_pack(pack, device="cpu")
        fp32_path = work / "fp32" / "model.onnx"
        if not fp32_path.is_file():
            export_pack(pack_path, work / "fp32", parity_gate=False, force=True, log=print)
        files, evaluation = calibration_files(None, pack.train_config)
        calibration = calibration_set(files[:args.calib_images], model.image_size, model.pad_value, evaluation)
        images = calibration_set(evaluation[:args.images], model.image_size, model.pad_value).images
        reference = torch_outputs(ExportGraph(model).eval(), images)
        present = quantizable_op_types(onnx.load(str(fp32_path), load_external_data=False))
        ranges = calibration_ranges(fp32_path, calibration.images, args.method, present)
        config = Int8Config(args.method)
        variants = ([("everything quantized", present)] + [(f"only {op}", [op]) for op in present]
                    + [("shipped (all but KEEP_FLOAT)", [op for op in present if op not in KEEP_FLOAT])])
        for name, op_types in variants:
            path = quantize(fp32_path, Path(tmp) / "variant.onnx", ranges, op_types, config)
            qdq = sum(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(path)).graph.node)
            ours, provider = onnx_outputs(path, images)
            parity = compare(ours, reference, "int8", provider)
            row = [name, ", ".join(op_types) or "none", str(qdq), *parity_cells(parity)]
            rows.append(row)
            print("  " + " | ".join(row), flush=True)

    title = "INT8 parity by op type quantized (world task, pretrained tiny SAM + CLIP)"
    lines = header(title) + [
        "",
        f"ONNX Runtime {provider} against the PyTorch FP32 graph (cpu) on {len(images)} held-out scenes of the world task "
        f"(its val split); ranges from {len(calibration.images)} training-split images ({args.method}, symmetric), "
        f"QDQ with per-channel int8 weights and per-tensor int8 activations (onnxruntime "
        f"{__import__('onnxruntime').__version__}, torch {torch.__version__}); the pack is the demo's training "
        f"({model.num_prompts} prompts). The INT8 gate: labels agree on >= {100 * THRESHOLDS['int8'][0]:.0f} %. "
        "Op types not listed are left in float. Shipped list left in float: "
        f"{', '.join(KEEP_FLOAT) or 'nothing'}.",
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)

    write_disagreement_plot(args.out.with_suffix(".png"), rows, title, 100 * (1 - THRESHOLDS["int8"][0]))
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
