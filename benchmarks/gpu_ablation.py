"""What each step of the fast graph buys: latency, throughput, GPU memory and parity, one step at a time.

Runs `ssp-bench`'s benchmark on the graphs that export_fullsize.py left in --work: SAM's own
layout (`--layout sam`: the encoder's attention and the decoder as SAM writes them, FP32 then
FP16) and the shipped layout (`--layout graph`), then the runtime settings one by one: only the
label map back to the host, CUDA graph replay (with a fixed batch axis); then the default with the
encoder's attention fused (`--layout ort-attention`). Rows whose graph is missing are left out and
say so. Each row is a fresh ONNX Runtime session per batch size in this one
process; ssp-bench in its own process (runtime_fullsize.py) gives the memory figures to quote.

    python benchmarks/gpu_ablation.py --work /tmp/ssp-gpu --out benchmarks/results/gpu_ablation_cuda.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_plot, write_report  # noqa: E402

# label, export folder under --work, CUDA graph (a fixed batch axis with it), outputs copied to the host (None: all)
STEPS = [
    ("SAM's layout, FP32 (as exported before)", "fp32-sam", False, None),
    ("+ FP16 graph", "fp16-sam", False, None),
    ("+ graph layout (PromptDecoder, EncoderAttention)", "fp16", False, None),
    ("+ only labels back to the host (the default)", "fp16", False, ("labels",)),
    ("+ fixed batch axis and CUDA graph (--cuda-graph)", "fp16", True, ("labels",)),
    ("the default, encoder attention fused (ssp-export --ort-attention)", "fp16-ort-attention", False, ("labels",)),
    ("the default, every ONNX Runtime fusion (ssp-export --ort-fused)", "fp16-ort-fused", False, ("labels",)),
    ("the default, FP32 graph", "fp32", False, ("labels",)),
]
COLUMNS = ["step", "graph", "batch 1 p50 ms", "batch 1 p99 ms", "batch 8 p50 ms", "batch 8 images/s", "GPU peak MB batch 1",
           "GPU peak MB batch 8", "labels agree with PyTorch FP32 %"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="export_fullsize.py --work folder")
    parser.add_argument("--provider", default="cuda")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_ablation_cuda.md"))
    args = parser.parse_args()

    from ssprompt.runtime.runner import open_runner
    from ssprompt.runtime.bench import benchmark

    rows, missing, plotted = [], [], []
    for label, folder, graph, outputs in STEPS:
        model = args.work / folder / "model.onnx"
        if not model.is_file():
            missing.append(f"{label}: not run ({folder}/model.onnx was not exported)")
            continue

        def open_batch(batch: int, model=model, graph=graph):
            return open_runner(model, "onnxruntime", args.provider, batch=batch, cuda_graph=graph)

        results, runner = benchmark(open_batch, [1, 8], args.warmup, args.iters, outputs=outputs, progress=False,
                                    log=lambda note: print(f"  {note}", flush=True))
        one, eight = results
        parity_file = args.work / f"parity-{folder}.json"
        agree = f"{100 * json.loads(parity_file.read_text())['label_agreement']:.3f}" if parity_file.is_file() else "n/a"
        rows.append([label, folder, f"{one.p50_ms:.2f}", f"{one.p99_ms:.2f}", f"{eight.p50_ms:.1f}", f"{eight.images_per_s:.1f}",
                     "n/a" if one.gpu_peak_mb is None else f"{one.gpu_peak_mb:.0f}",
                     "n/a" if eight.gpu_peak_mb is None else f"{eight.gpu_peak_mb:.0f}", agree])
        plotted.append((label, one.p50_ms, eight.images_per_s))
        print("  " + " | ".join(rows[-1]), flush=True)

    lines = header("Ablation: what each step of the fast graph buys (vit_b + ViT-B-16, random weights)") + [
        "",
        f"ONNX Runtime {runner.device if rows else args.provider}; {args.warmup} warm-up and {args.iters} timed calls per batch "
        "size; uint8 images in on the host, outputs back on the host (all five, or only the label map). GPU peak: NVML, "
        "this process (sessions run one after another in one process, so a row can carry memory an earlier one left "
        "cached; runtime_fullsize_cuda.md has each graph in a fresh process). Parity: the export's gate, 4 generated "
        "images against the PyTorch FP32 graph.",
        "",
        *table_lines(COLUMNS, rows),
        *([""] + [f"- {line}" for line in missing] if missing else []),
    ]
    write_report(args.out, lines)

    def draw(ax_latency, ax_throughput) -> None:
        names = [p[0] for p in plotted]
        ax_latency.barh(range(len(plotted)), [p[1] for p in plotted], color="#4c72b0")
        ax_latency.set_yticks(range(len(plotted)), names, fontsize=7)
        ax_latency.invert_yaxis()
        ax_latency.set_xlabel("batch 1 p50 ms")
        ax_throughput.barh(range(len(plotted)), [p[2] for p in plotted], color="#dd8452")
        ax_throughput.set_yticks(range(len(plotted)), [])
        ax_throughput.invert_yaxis()
        ax_throughput.set_xlabel("batch 8 images / s")

    if plotted:
        write_plot(args.out.with_suffix(".png"), draw, "What each step buys", panels=2, size=(10, 1.2 + 0.45 * len(plotted)))


if __name__ == "__main__":
    main()
