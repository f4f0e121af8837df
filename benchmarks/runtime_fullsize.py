"""ssp-bench at full-size architecture (SAM ViT-B + CLIP ViT-B/16, random weights) on ONNX Runtime.

Runs `ssp-bench` (each graph in its own process, so memory figures are the runtime's alone)
on the graphs that export_fullsize.py left in --work (FP32 and FP16 by default; --graphs names
export folders, such as fp16-ort-attention), or exports them here (no parity gate) where missing. Writes one markdown table and a latency plot.

    python benchmarks/runtime_fullsize.py --out benchmarks/results/runtime_fullsize_cpu.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import environment_line, fullsize_parser, header, random_fullsize_pack, table_lines, write_plot, write_report  # noqa: E402

COLUMNS = ["graph", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "host peak RSS MB", "GPU peak MB", "timing"]


def bench_json(model: Path, args) -> dict:
    """`ssp-bench --json` on `model` in a fresh process."""
    command = [sys.executable, "-c", "from ssprompt.runtime.cli import bench_command; bench_command()", str(model),
               "--batch", args.batch, "--warmup", str(args.warmup), "--iters", str(args.iters), "--provider", args.provider,
               "--cuda-graph" if args.cuda_graph else "--no-cuda-graph", "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"ssp-bench {model} failed:\n{done.stderr[-3000:]}")
    for line in done.stderr.splitlines():
        print(f"  ssp-bench: {line}", flush=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def models(work: Path, args) -> dict[str, Path]:
    """graph -> model.onnx under `work`, exported here (no parity gate) where missing. A graph is named by its
    export_fullsize.py folder: the precision, then the layout where it is not the shipped one (fp16-ort-attention)."""
    from ssprompt.export.pipeline import export_pack

    found = {}
    for name in args.graphs.split(","):
        precision, _, layout = name.partition("-")
        if precision not in ("fp32", "fp16"):
            raise SystemExit(f"--graphs {name}: a graph's name starts with fp32 or fp16")
        onnx = work / name / "model.onnx"
        if not onnx.is_file():
            pack = work / "pack.pt"
            if not pack.is_file():
                random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, pack)
            export_pack(pack, work / name, fp16=precision == "fp16", parity_gate=False, force=True, layout=layout or "graph",
                        log=print)
        found[name] = onnx
    return found


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--graphs", "--precisions", dest="graphs", default="fp32,fp16",
                        help="export folders: fp32, fp16, or with a layout, e.g. fp32-ort-attention")
    parser.add_argument("--batch", default="1,2")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--provider", default="auto")
    parser.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=False, help="ssp-bench --cuda-graph (CUDA only)")
    parser.add_argument("--work", type=Path, help="folder with pack.pt and the graphs' exports (export_fullsize.py --work)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/runtime_fullsize_cpu.md"))
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, onnx in models(work, args).items():
            print(f"ssp-bench {name}", flush=True)
            results[name] = bench_json(onnx, args)

    rows = []
    for name, result in results.items():
        for r in result["rows"]:
            gpu = "n/a" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f} ({r['gpu_memory_scope']})"
            rows.append([name, str(r["batch"]), f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}",
                         f"{r['images_per_s']:.2f}", f"{r['host_peak_rss_mb']:.0f}", gpu, r["timing"]])
    environment = next(iter(results.values()))["environment"]
    lines = header(f"ssp-bench at full-size architecture ({args.sam} + {args.clip}, random weights)") + [
        f"{args.prompts} spatial prompts, {args.classes} classes, 1024 x 1024 input; `ssp-bench --batch {args.batch} "
        f"--warmup {args.warmup} --iters {args.iters} --provider {args.provider} --{'' if args.cuda_graph else 'no-'}cuda-graph` "
        "on each graph in its own process. A call takes uint8 images on the host and returns the label map on the host.",
        environment_line(environment),
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)

    def draw(ax_latency, ax_throughput) -> None:
        for name, result in results.items():
            batches = [r["batch"] for r in result["rows"]]
            ax_latency.plot(batches, [r["p50_ms"] for r in result["rows"]], "o-", label=f"{name} p50")
            ax_latency.fill_between(batches, [r["p50_ms"] for r in result["rows"]], [r["p99_ms"] for r in result["rows"]],
                                    alpha=0.2)
            ax_throughput.plot(batches, [r["images_per_s"] for r in result["rows"]], "s-", label=name)
        ax_latency.set_xlabel("batch")
        ax_latency.set_ylabel("ms per call (band: p50-p99)")
        ax_throughput.set_xlabel("batch")
        ax_throughput.set_ylabel("images / s")
        ax_latency.legend(fontsize=7)
        ax_throughput.legend(fontsize=7)

    write_plot(args.out.with_suffix(".png"), draw, f"ssp-bench, {args.sam} + {args.clip}, {environment['device']}", panels=2,
               size=(9, 3.4))


if __name__ == "__main__":
    main()
