"""Export time, file size and parity at full-size architecture, random weights.

Builds SAM ViT-B + CLIP ViT-B/16 holding seeded random weights (export behaviour does not
depend on weight values), wraps their default prompts in a pack, and runs the same export
as `ssp-export` in FP32 and FP16 (one trace serves both). Parity runs on the best ONNX Runtime
provider here (CUDA where present) against PyTorch FP32. Writes a markdown table.

    python benchmarks/export_fullsize.py --out benchmarks/results/export_fullsize.md
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, random_fullsize_pack, table_lines, write_report  # noqa: E402

COLUMNS = ["precision", "layout", "export s (incl. parity)", "model.onnx MiB", "parity on", "label agreement",
           "mask logit mean abs err", "max abs err", "confidence max abs err", "gate"]


def export_all(work: Path, args, log=print) -> list[list[str]]:
    """pack.pt and one export folder per precision under `work` (kept for later steps); the table rows."""
    from ssprompt.export.pipeline import ExportError, export_pack
    from ssprompt.runtime.files import write_text_atomic

    pack_path = work / "pack.pt"
    if not pack_path.is_file():
        began = time.perf_counter()
        random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, pack_path)
        log(f"pack built in {time.perf_counter() - began:.0f} s")
    rows = []
    for precision in args.precisions.split(","):
        folder = work / (precision if args.layout == "graph" else f"{precision}-{args.layout}")
        try:
            result = export_pack(pack_path, folder, fp16=precision == "fp16", force=True, layout=args.layout,
                                 parity_provider=args.parity_provider, log=log)
        except ExportError as err:  # a failed parity gate is a result too
            rows.append([precision, args.layout, "", "", "", "", "", "", "", str(err)])
            continue
        p = result.parity
        write_text_atomic(work / f"parity-{folder.name}.json", json.dumps(asdict(p)))
        rows.append([precision, args.layout, f"{result.seconds:.0f}", f"{result.onnx_bytes / 2**20:.0f}", p.provider,
                     f"{100 * p.label_agreement:.3f}%", f"{p.mask_mean_error:.2e}", f"{p.mask_max_error:.2e}",
                     f"{p.confidence_max_error:.2e}", "pass"])
        log("  " + " | ".join(rows[-1]))
    return rows


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--layout", default="graph", help="graph (what ships), ort-attention (ssp-export --ort-attention), "
                        "ort-fused (ssp-export --ort-fused) or sam (SAM's attention and decoder layout; ablation)")
    parser.add_argument("--parity-provider", default="auto", help="ONNX Runtime provider of the parity gate")
    parser.add_argument("--work", type=Path, help="keep pack.pt and the export folders here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_fullsize.md"))
    args = parser.parse_args()

    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        rows = export_all(args.work, args)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = export_all(Path(tmp), args)

    lines = header(f"Export at full-size architecture ({args.sam} + {args.clip}, random weights)") + [
        f"{args.prompts} spatial prompts, {args.classes} classes; parity on 4 generated images, ONNX Runtime against "
        "PyTorch FP32 (TF32 off). Weights are random (seeded): sizes and timings are representative, mIoU is not.",
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
