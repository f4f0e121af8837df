"""ssp-bench at full-size architecture (SAM ViT-B + CLIP ViT-B/16, random weights) on ONNX Runtime.

Exports the graph (FP32, no parity gate: export_fullsize.py measures parity), then runs the
same benchmark as `ssp-bench` on the available execution provider. Writes a markdown table
and a latency plot.

    python benchmarks/runtime_fullsize.py --out benchmarks/results/runtime_fullsize_cpu.md
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, random_fullsize_pack  # noqa: E402


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_fullsize_cpu.md"))
    args = parser.parse_args()

    from ssprompt.export.pipeline import export_pack

    with tempfile.TemporaryDirectory() as tmp:
        pack = random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, Path(tmp) / "pack.pt")
        exported = export_pack(pack, Path(tmp) / "model", parity_gate=False, log=print)
        table = Path(tmp) / "bench.md"
        # ssp-bench in its own process: its peak RSS is the runtime's, not this export's.
        bench = [str(exported.onnx), "--batch", args.batch, "--warmup", str(args.warmup), "--iters", str(args.iters),
                 "--provider", args.provider, "--markdown", str(table), "--plot", str(args.out.with_suffix(".png")), "--quiet"]
        subprocess.run([sys.executable, "-c", "from ssprompt.runtime.cli import bench_command; bench_command()", *bench], check=True)
        lines = header(f"ssp-bench at full-size architecture ({args.sam} + {args.clip}, random weights)")
        lines += [f"{args.prompts} spatial prompts, {args.classes} classes, 1024 x 1024 input; the table below is "
                  "`ssp-bench`'s own output, run in a separate process.", ""]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n" + table.read_text())
    print(args.out.read_text())


if __name__ == "__main__":
    main()
