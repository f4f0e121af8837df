"""FP32, FP16 and INT8 graphs on this CPU at batch 1: ms an image, peak RSS, file size, and the world task's mIoU.

Two models, each exported three ways with `ssp-export`'s own pipeline (export.pipeline.export_pack):

- full size: SAM ViT-B + CLIP ViT-B/16 with seeded random weights (benchmarks/common.py; speed and
  memory do not depend on weight values), INT8 calibrated on --full-calib generated scenes;
- the world task's pretrained tiny model (the demo's training, benchmarks/common.py demo_world_pack),
  INT8 calibrated on the first --calib-images images of its training split.

Every graph runs under `ssp-bench` in its own process (benchmarks/runtime_fullsize.py bench_json), one
after the other in one run, so the figures stand side by side. The tiny model's graphs are also scored
as `ssp-eval` scores (mIoU of the label maps at each label's own size, void ignored) on all of the
world's held-out val split, through the runtime (`ssp-run`'s Segmenter). Writes a markdown table and a
plot (same name, .png).

    python benchmarks/edge_cpu.py --work /tmp/edge --out benchmarks/results/edge_cpu.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import (demo_world_pack, environment_line, fullsize_parser, header, random_fullsize_pack, table_lines,  # noqa: E402
                    write_plot, write_report)
from runtime_fullsize import bench_json  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
COLUMNS = ["model", "graph", "file MiB", "file vs FP32", "p50 ms / image", "speed-up vs FP32", "host peak RSS MB",
           "world val mIoU %", "mIoU vs FP32 (points)"]


def parse_args() -> argparse.Namespace:
    parser = fullsize_parser(__doc__)
    parser.add_argument("--work", type=Path, help="folder for packs, data and exports (reused when present)")
    parser.add_argument("--models", default="full,tiny", help="full, tiny or both")
    parser.add_argument("--full-calib", type=int, default=2, help="generated scenes the full-size INT8 graph calibrates on")
    parser.add_argument("--calib-images", type=int, default=16, help="training images the tiny INT8 graph calibrates on")
    parser.add_argument("--method", default="minmax", help="calibration method")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed calls at full size (the tiny model: 10 x as many)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/edge_cpu.md"))
    return parser.parse_args()


def export_three(pack: Path, folder: Path, calib: Path | None, calib_images: int, method: str) -> dict[str, Path]:
    """precision -> model.onnx under `folder`, exported here where missing (no parity gate: this table measures the
    graphs; the gate has its own tests and the tiny model's mIoU is scored below)."""
    from ssprompt.export.int8 import Int8Config
    from ssprompt.export.pipeline import export_pack

    found = {}
    for precision in PRECISIONS:
        onnx = folder / precision / "model.onnx"
        if not onnx.is_file():
            print(f"exporting {folder.name} {precision}", flush=True)
            export_pack(pack, folder / precision, fp16=precision == "fp16", parity_gate=False, force=True,
                        int8=Int8Config(method) if precision == "int8" else None, calib=calib, calib_images=calib_images,
                        log=lambda line: print(f"  {line}", flush=True))
        found[precision] = onnx
    return found


def file_mib(onnx: Path) -> float:
    return sum(p.stat().st_size for p in onnx.parent.glob(onnx.name + "*")) / 2**20


def world_miou(onnx: Path, pack: Path) -> float:
    """mIoU (%) of the graph's label maps on the pack's held-out split, as ssp-eval scores it."""
    from ssprompt.runtime.runner import open_runner
    from ssprompt.runtime.segmenter import Segmenter
    from ssprompt.train.data.layouts import open_folder
    from ssprompt.train.data.reading import read_image, read_label
    from ssprompt.train.metrics import confusion_matrix, metrics_from_confusion
    from ssprompt.train.pack import load_pack

    loaded = load_pack(pack)
    folder = open_folder(loaded.train_config["data"], loaded.train_config["val_split"], loaded.void)
    confusion = np.zeros((folder.num_classes, folder.num_classes), np.int64)
    with open_runner(onnx, "onnxruntime", "cpu") as runner:
        segmenter = Segmenter(runner)
        for sample in folder.samples:
            labels = segmenter.segment([read_image(sample.image)])[0]
            confusion += confusion_matrix(read_label(sample, folder.num_classes, loaded.void), labels, folder.num_classes,
                                          loaded.void)
    return 100 * metrics_from_confusion(confusion, folder.class_names)["miou"]


def main() -> None:
    args = parse_args()
    began = time.perf_counter()
    results: dict[tuple[str, str], dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        models = {}
        if "full" in args.models:
            full = work / "full"
            full.mkdir(exist_ok=True)
            if not (full / "pack.pt").is_file():
                random_fullsize_pack(args.sam, args.clip, args.prompts, args.classes, full / "pack.pt")
            calib = full / "calib"
            if not calib.is_dir():
                from ssprompt.train.synthetic import make_synthetic

                make_synthetic(calib, n_train=args.full_calib, n_val=1, seed=4321)
            graphs = export_three(full / "pack.pt", full, calib / "train" / "images", args.full_calib, args.method)
            models["full size"] = (graphs, None, argparse.Namespace(batch="1", warmup=args.warmup, iters=args.iters,
                                                                    provider="cpu", cuda_graph=False))
        if "tiny" in args.models:
            tiny = work / "tiny"
            tiny.mkdir(exist_ok=True)
            pack = demo_world_pack(tiny)
            graphs = export_three(pack, tiny, None, args.calib_images, args.method)
            models["world tiny"] = (graphs, pack, argparse.Namespace(batch="1", warmup=3 * args.warmup, iters=10 * args.iters,
                                                                     provider="cpu", cuda_graph=False))
        for model, (graphs, pack, bench) in models.items():
            for precision, onnx in graphs.items():
                print(f"ssp-bench {model} {precision}", flush=True)
                result = bench_json(onnx, bench)
                result["file_mib"] = file_mib(onnx)
                result["miou"] = world_miou(onnx, pack) if pack is not None else None
                results[(model, precision)] = result

    rows = []
    for (model, precision), result in results.items():
        base = results[(model, "fp32")]
        row, base_row = result["rows"][0], base["rows"][0]
        miou = "n/a" if result["miou"] is None else f"{result['miou']:.2f}"
        delta = "n/a" if result["miou"] is None else f"{result['miou'] - base['miou']:+.2f}"
        rows.append([model, precision, f"{result['file_mib']:.1f}", f"{100 * result['file_mib'] / base['file_mib']:.0f} %",
                     f"{row['p50_ms']:.1f}", f"{base_row['p50_ms'] / row['p50_ms']:.2f}x", f"{row['host_peak_rss_mb']:.0f}",
                     miou, delta])
    environment = next(iter(results.values()))["environment"]
    described = {
        "full size": f"Full size: {args.sam} + {args.clip} with random weights, {args.prompts} prompts, {args.classes} classes, "
                     f"1024 x 1024 input, INT8 calibrated on {args.full_calib} generated scenes; `ssp-bench --batch 1 "
                     f"--warmup {args.warmup} --iters {args.iters} --provider cpu`.",
        "world tiny": f"World tiny: the demo's pack on the world task (pretrained tiny backbones), INT8 calibrated on "
                      f"{args.calib_images} training-split images; `--warmup {3 * args.warmup} --iters {10 * args.iters}`; "
                      "mIoU on all of the held-out val split as ssp-eval scores it, from the runtime's label maps.",
    }
    lines = header("FP32, FP16 and INT8 graphs on the CPU at batch 1") + [
        "",
        " ".join(described[model] for model in models) + " INT8: QDQ, per-channel symmetric int8 weights, per-tensor "
        f"symmetric int8 activations, {args.method} calibration (export/int8.py). Each graph runs in its own process; peak "
        "RSS is that process's (ssp-bench). File size counts the model and its external data.",
        environment_line(environment),
        "",
        *table_lines(COLUMNS, rows),
    ]
    write_report(args.out, lines)

    def draw(ax_time, ax_memory, ax_size) -> None:
        names = [f"{model}\n{precision}" for model, precision in results]
        colours = ["#4c72b0", "#dd8452", "#55a868"] * len(results)
        for ax, key, label in ((ax_time, "time", "ms an image (relative to FP32)"),
                               (ax_memory, "rss", "peak RSS (relative to FP32)"), (ax_size, "file", "file size (relative to FP32)")):
            values = []
            for (model, _), result in results.items():
                base = results[(model, "fp32")]
                pick = {"time": lambda r: r["rows"][0]["p50_ms"], "rss": lambda r: r["rows"][0]["host_peak_rss_mb"],
                        "file": lambda r: r["file_mib"]}[key]
                values.append(pick(result) / pick(base))
            ax.barh(range(len(values)), values, color=colours[:len(values)])
            ax.set_yticks(range(len(values)), names if ax is ax_time else [""] * len(values), fontsize=7)
            ax.invert_yaxis()
            ax.axvline(1.0, color="grey", linewidth=0.8)
            ax.set_xlabel(label, fontsize=8)

    write_plot(args.out.with_suffix(".png"), draw, "FP32 / FP16 / INT8 on the CPU, batch 1", panels=3, size=(10, 3.6))
    print(f"wrote {args.out} in {time.perf_counter() - began:.0f} s", flush=True)


if __name__ == "__main__":
    main()
