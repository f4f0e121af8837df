"""Where the time goes: ONNX Runtime's node profile of an exported graph, by graph region and by op type.

Runs the graph (batch axis fixed, no CUDA graph) with ONNX Runtime's profiler on, in a process
started with CUDA_LAUNCH_BLOCKING=1, so each node's recorded duration is its GPU time rather than
the time to launch its kernels (the sum is slower than a real call; the shares are what count).
Regions come from the exporter's node names: SAM's image encoder, the dense CLIP features, the
mask decoder, and the rest (mask classification, semantic map, resize, argmax). Nodes that ONNX
Runtime's optimizer made (a fused Gelu is `Gelu_token_596`) have lost those names; they are
followed, in the optimized graph the session saves, to the tensors they write or read. On an H100
or H200 (or with `--ceilings`), each region and op type also gets its floor from roofline.py, the
least time its nodes need at that GPU's measured rates, and the measured time over that floor.

    python benchmarks/gpu_profile.py /tmp/ssprompt-gpu/fp16/model.onnx --out benchmarks/results/gpu_profile_cuda.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import header, table_lines, write_report  # noqa: E402

REGIONS = (("image_encoder", "SAM image encoder"), ("clip", "dense CLIP features"), ("decoder", "mask decoder"))
OTHER = "classifier, semantic map, resize, argmax"


def region(node: str) -> str:
    return next((label for key, label in REGIONS if key in node), OTHER)


def node_regions(optimized: Path) -> dict[str, str]:
    """Region of every node of the optimized graph: by its name where the exporter gave it one (names
    start with '/'), else by the first of its outputs, then its inputs, that names a region."""
    import onnx

    regions = {}
    for node in onnx.load(str(optimized), load_external_data=False).graph.node:
        names = [node.name] if node.name.startswith("/") else [*node.output, *node.input]
        regions[node.name] = next((region(name) for name in names if region(name) != OTHER), OTHER)
    return regions


def profile(model: Path, provider: str, batch: int, iters: int, folder: Path) -> tuple[str, Path]:
    """One profiled session in this process; returns the provider that ran and the profile's path."""
    import numpy as np
    import onnxruntime as ort

    from ssprompt.runtime.contract import BATCH_AXIS, INPUT, LABELS

    from roofline import declare_shapes

    options = ort.SessionOptions()
    # Extended: all of ONNX Runtime's fusions, as the runtime's default level gets on a GPU, without the CPU-only
    # blocked (NCHWc) layout for the four convolutions, whose nodes roofline.py cannot price.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "profile")
    options.optimized_model_filepath = str(folder / "optimized.onnx")  # what ran, with the optimizer's own nodes
    options.add_free_dimension_override_by_name(BATCH_AXIS, batch)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    # Shapes declared, so that the saved graph carries them for roofline.py's floors.
    session = ort.InferenceSession(str(declare_shapes(model, folder / "declared.onnx")), options, providers=providers)
    size = session.get_inputs()[0].shape[1]
    images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for _ in range(iters + 1):  # the first call (allocations, algorithm search) is dropped below
        session.run([LABELS], {INPUT: images})
    return session.get_providers()[0], Path(session.end_profiling())


def summarise(path: Path, iters: int, regions: dict[str, str]) -> tuple[dict, dict, dict, float]:
    """ms per call by region, by op type and by (region, op type), and the total, from the runs after the first.

    `regions`: node name -> region (node_regions); a node it lacks goes by its own name.
    """
    trace = json.loads(path.read_text())
    events = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    start = runs[1]["ts"] if len(runs) > 1 else 0  # skip the first call
    by_region: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    by_region_op: dict[tuple[str, str], float] = defaultdict(float)
    for event in events:
        if event["ts"] < start:
            continue
        ms = event["dur"] / 1e3 / iters
        op = event.get("args", {}).get("op_name", "?")
        node = event["name"].removesuffix("_kernel_time")
        where = regions.get(node, region(node))
        by_region[where] += ms
        by_op[op] += ms
        by_region_op[where, op] += ms
    return by_region, by_op, by_region_op, sum(by_region.values())


def floors(optimized: Path, ceilings: str, regions: dict[str, str]) -> tuple[dict, dict]:
    """ms per call that the nodes of each region and of each op type need at least at `ceilings`' measured
    rates (benchmarks/roofline.py: one kernel a node, FLOPs over the matmul rate or bytes over bandwidth)."""
    from roofline import GPUS, node_costs

    tflops, tbps = GPUS[ceilings]
    by_region: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for cost in node_costs(optimized):
        ms = 1e3 * cost.floor_s(tflops * 1e12, tbps * 1e12)
        by_region[regions.get(cost.name, cost.region)] += ms
        by_op[cost.op] += ms
    return by_region, by_op


def _ceilings(choice: str | None, device: str) -> str | None:
    """The GPU whose ceilings the floors use: as asked, or for 'auto' the H100 or H200 that ran (else none)."""
    if choice != "auto":
        return choice
    if device != "CUDAExecutionProvider":
        return None
    from ssprompt.runtime.gpu import gpu_name

    name = (gpu_name() or "").upper()
    return next((gpu for gpu in ("h200", "h100") if gpu.upper() in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--provider", default="cuda", help="cuda or cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--ceilings", default="auto", help="h200, h100, auto (the GPU that ran, if one of those) "
                        "or none: whose measured rates price each node's floor (benchmarks/roofline.py)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_profile_cuda.md"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        device, path = profile(args.model, args.provider, args.batch, args.iters, Path(args.worker))
        print(json.dumps({"device": device, "profile": str(path)}))
        return
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1")
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--worker", tmp], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"profiling failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        regions = node_regions(Path(tmp) / "optimized.onnx")
        by_region, by_op, by_region_op, total = summarise(Path(result["profile"]), args.iters, regions)
        ceilings = _ceilings(None if args.ceilings == "none" else args.ceilings, result["device"])
        floor_region, floor_op = {}, {}
        if ceilings:
            try:
                floor_region, floor_op = floors(Path(tmp) / "optimized.onnx", ceilings, regions)
            except Exception as error:  # noqa: BLE001 - a device run's profile stands without its floors
                print(f"no floors: {error}", file=sys.stderr)
                ceilings = None

    def rows(values: dict, limit: int | None = None, floor: dict | None = None) -> list[list[str]]:
        table = []
        for name, ms in sorted(values.items(), key=lambda item: -item[1])[:limit]:
            row = [*([name] if isinstance(name, str) else name), f"{ms:.2f}", f"{100 * ms / total:.1f}"]
            if ceilings and floor is not None:
                least = floor.get(name, 0.0)
                row += [f"{least:.3g}", f"{ms / least:.1f}" if least else "n/a"]
            table.append(row)
        return table

    floor_columns = ["floor ms", "time / floor"] if ceilings else []
    floor_note = (f" Floors: the least time each node needs at the {ceilings.upper()}'s measured ceilings, one "
                  "kernel a node (benchmarks/roofline.py); 'time / floor' is how many times slower its nodes ran."
                  if ceilings else "")

    blocking = (" with CUDA_LAUNCH_BLOCKING=1 (every node waits for its kernels)"
                if result["device"] == "CUDAExecutionProvider" else "")
    lines = header(f"Where the time goes: {args.model.parent.name}/{args.model.name} at batch {args.batch}") + [
        "",
        f"ONNX Runtime {result['device']}, node profile{blocking}, mean of {args.iters} calls after a dropped first one; "
        f"{total:.1f} ms of node time a call. Shares matter; the absolute sum is slower than an unprofiled call."
        + floor_note,
        "",
        *table_lines(["graph region", "ms per call", "%", *floor_columns], rows(by_region, floor=floor_region)),
        "",
        *table_lines(["op type", "ms per call", "%", *floor_columns], rows(by_op, 20, floor_op)),
        "",
        "The 20 largest (graph region, op type) pairs, % of all node time:",
        "",
        *table_lines(["graph region", "op type", "ms per call", "%"], rows(by_region_op, 20)),
    ]
    write_report(args.out, lines)


if __name__ == "__main__":
    main()
