"""Export time, file size and ONNX Runtime (CPU) parity at full-size architecture, random weights.

Builds SAM ViT-B + CLIP ViT-B/16 holding seeded random weights (export behaviour does not
depend on weight values), wraps their default prompts in a pack, and runs the same export
as `ssp-export` in FP32 and FP16. Writes a markdown table.

    python benchmarks/export_fullsize.py --out benchmarks/results/export_fullsize.md
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, random_fullsize_pack  # noqa: E402


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--precisions", default="fp32,fp16")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/export_fullsize.md"))
    args = parser.parse_args()

    import onnxruntime

    from ssprompt.export.pipeline import ExportError, export_pack

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        began = time.perf_counter()
        pack_path = random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, Path(tmp) / "pack.pt")
        print(f"pack built in {time.perf_counter() - began:.0f} s", flush=True)
        for precision in args.precisions.split(","):
            try:
                result = export_pack(pack_path, Path(tmp) / precision, fp16=precision == "fp16", log=print)
            except ExportError as err:  # a failed parity gate is a result too
                rows.append((precision, None, None, None, None, None, str(err)))
                continue
            p = result.parity
            rows.append((precision, result.seconds, result.onnx_bytes / 2**20, p.label_agreement, p.mask_mean_error, p.mask_max_error, "pass"))

    lines = header(f"Export at full-size architecture ({args.sam} + {args.clip}, random weights)") + [
        f"onnxruntime {onnxruntime.__version__}. {args.prompts} spatial prompts, {args.classes} classes; parity on 4 "
        "generated images, ONNX Runtime CPU vs PyTorch. Weights are random (seeded): sizes and timings are "
        "representative, mIoU is not.",
        "",
        "| precision | export s (incl. parity) | model.onnx MiB | label agreement | mask logit mean abs err | max abs err | gate |",
        "|---|---|---|---|---|---|---|",
    ]
    for precision, seconds, mib, agree, mean_err, max_err, gate in rows:
        if seconds is None:
            lines.append(f"| {precision} | | | | | | {gate} |")
        else:
            lines.append(f"| {precision} | {seconds:.0f} | {mib:.0f} | {100 * agree:.3f}% | {mean_err:.2e} | {max_err:.2e} | {gate} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
