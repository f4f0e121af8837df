"""FLOPs per image by graph region: the full-size graph as the export traces it, counted by torch.

The regions are gpu_profile.py's, so a region's share of the FLOPs reads against its share of the
node time in gpu_profile_cuda.md: a region whose time share is far above its FLOP share does not
spend its time in matmuls. FLOPs do not depend on weight values, so the weights are random.

    python benchmarks/flops.py --out benchmarks/results/flops_fullsize.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import fullsize_parser, header, random_fullsize_model, table_lines, write_report  # noqa: E402
from gpu_profile import OTHER, REGIONS, region  # noqa: E402

COLUMNS = ["layout", "graph region", "GFLOP per image", "%"]


def flops_by_region(counts: dict[str, dict]) -> dict[str, float]:
    """FLOPs by region from FlopCounterMode's per-module counts (a module's count holds its children's).

    Each region is its outermost module, i.e. the largest count among the module names it matches;
    what no region's module ran (classifier, semantic map, resize) is the rest of the total.
    """
    total = sum(counts["Global"].values())
    by_region = {label: 0.0 for _, label in REGIONS}
    for name, ops in counts.items():
        label = region(name)
        if name != "Global" and label != OTHER:
            by_region[label] = max(by_region[label], float(sum(ops.values())))
    by_region[OTHER] = total - sum(by_region.values())
    return by_region


def count_graph(model, layout: str) -> dict[str, float]:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ssprompt.export.graph import ExportGraph, dummy_inputs

    graph = ExportGraph(model, layout).eval()
    # The math backend, as runtime_compare.py counts: every attention product is an explicit matmul. Without
    # grad, nn.MultiheadAttention (CLIP's) takes a fused fast path that the counter does not see; turn it off.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            graph(**dummy_inputs(model.image_size))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return flops_by_region(counter.get_flop_counts())


def main() -> None:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--layouts", default="graph,sam", help="export layouts to count (export.graph.LAYOUTS)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/flops_fullsize.md"))
    args = parser.parse_args()

    model, _ = random_fullsize_model(args.sam, args.clip, args.prompts, args.classes)
    rows = []
    for layout in args.layouts.split(","):
        print(f"counting {layout}", flush=True)
        by_region = count_graph(model, layout)
        total = sum(by_region.values())
        rows += [[layout, label, f"{flops / 1e9:.2f}", f"{100 * flops / total:.1f}"] for label, flops in by_region.items()]
        rows.append([layout, "all", f"{total / 1e9:.2f}", "100.0"])
    lines = header(f"FLOPs per image by graph region ({args.sam} + {args.clip}, random weights)") + [
        "",
        f"{args.prompts} spatial prompts, {args.classes} classes, one {model.image_size} x {model.image_size} image. "
        "torch.utils.flop_counter on the module the export traces (export.graph.ExportGraph), SDPA as explicit "
        "matmuls; 2 FLOPs per multiply-add; matmuls, convolutions and attention only (elementwise work, "
        "normalisation and resizes are not counted). Regions as benchmarks/gpu_profile.py names them; "
        f"'{OTHER}' is what no encoder or decoder module ran.",
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
