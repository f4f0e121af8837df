"""One prepared GPU run: every CUDA table of benchmarks/results, in one go, within a time budget.

On a machine with CUDA, torch and onnxruntime-gpu (TensorRT too, where it imports):

    python benchmarks/gpu.py                      # or: benchmarks/gpu.sh

Steps, in order of what matters most (a step that no longer fits in --budget is skipped and
listed as skipped; each runs in its own process, with a time limit):

1. export     full-size export, FP32 and FP16, parity on the GPU     -> export_fullsize_cuda.md
2. bench      ssp-bench at batch 1 and 8, FP16 and FP32             -> runtime_fullsize_cuda.md (+ .png)
3. compare    the graph against torch eager, unfused glue, AMG      -> runtime_compare_cuda.md (+ .png)
4. train      training cost per image, SSPrompt against CoOp        -> train_efficiency_cuda.md (+ .png)
5. profile    node time by graph region and op type (FP16, batch 8) -> gpu_profile_cuda.md
6. ort-attention  FP16 export with --ort-attention (for the ablation) -> export_fullsize_ort_attention_cuda.md
7. decoder    the mask decoder alone, SAM's layout against the graph -> decoder_cost_cuda.md
8. sam-export SAM's own layout exported, FP32 and FP16 (ablation)   -> export_fullsize_sam_cuda.md
9. ablation   what each step buys                                  -> gpu_ablation_cuda.md (+ .png)
10. fp16-ops  FP16 parity by op type kept in FP32                   -> fp16_ops_cuda.md (+ .png)
11. ort-fused FP16 export with --ort-fused, parity on the GPU         -> export_fullsize_ort_fused_cuda.md
12. ort-fused-bench  ssp-bench at batch 1 and 8, the default FP16 graph and --ort-fused's side by side
                                                                    -> runtime_fullsize_ort_fused_cuda.md (+ .png)
13. ort-fused-profile  node time of the --ort-fused graph (FP16, batch 8) -> gpu_profile_ort_fused_cuda.md

On the H200 (benchmarks/results/gpu_run_cuda.md) export took 97 s, bench 42, profile 10, ort-attention 75,
sam-export 90, ablation 71 and fp16-ops 155 (as committed at 856a448: train 96, compare 226): one call of the
default budget (480 s) does not hold every step; --steps picks them (DEVELOPERS.md plans two calls). The
ort-fused steps come last in the default order but first in the planned call: ort-fused-bench needs the export
step's fp16 graph.

Every table names the GPU, the driver and the versions in its header. A summary of the run
(steps, seconds, skipped) goes to gpu_run_cuda.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import command_line, header, table_lines, write_report  # noqa: E402


def steps(work: Path, results: Path, args) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds it may take at most) in the order they run."""
    py = [sys.executable]
    size = ["--sam", args.sam, "--clip", args.clip]
    bench = Path("benchmarks")  # relative: the run happens in the repository root, and tables show the commands
    return [
        ("export", py + [str(bench / "export_fullsize.py"), *size, "--work", str(work),
                         "--out", str(results / "export_fullsize_cuda.md")], 300),
        ("bench", py + [str(bench / "runtime_fullsize.py"), *size, "--work", str(work), "--batch", "1,8", "--warmup", "5",
                        "--iters", "50", "--provider", args.provider, "--out", str(results / "runtime_fullsize_cuda.md")], 180),
        ("compare", py + [str(bench / "runtime_compare.py"), *size, "--work", str(work), "--device", "cuda", "--batch", "1,8",
                          "--warmup", "2", "--iters", "10", "--amg-images", "2", "--provider", args.provider,
                          "--out", str(results / "runtime_compare_cuda.md")], 300),
        ("train", py + [str(bench / "train_efficiency.py"), *size, "--device", "cuda", "--steps", "5",
                        "--out", str(results / "train_efficiency_cuda.md")], 180),
        ("profile", py + [str(bench / "gpu_profile.py"), str(work / "fp16" / "model.onnx"), "--batch", "8",
                          "--out", str(results / "gpu_profile_cuda.md")], 120),
        ("ort-attention", py + [str(bench / "export_fullsize.py"), *size, "--work", str(work), "--layout", "ort-attention",
                                "--precisions", "fp16", "--out", str(results / "export_fullsize_ort_attention_cuda.md")], 150),
        ("decoder", py + [str(bench / "decoder_cost.py"), "--provider", "cuda", "--precisions", "fp32,fp16", "--batch", "8",
                          "--warmup", "3", "--iters", "20", "--out", str(results / "decoder_cost_cuda.md")], 150),
        ("sam-export", py + [str(bench / "export_fullsize.py"), *size, "--work", str(work), "--layout", "sam",
                             "--out", str(results / "export_fullsize_sam_cuda.md")], 240),
        ("ablation", py + [str(bench / "gpu_ablation.py"), "--work", str(work), "--provider", args.provider,
                           "--out", str(results / "gpu_ablation_cuda.md")], 240),
        ("fp16-ops", py + [str(bench / "fp16_ops.py"), *size, "--provider", args.provider, "--device", "cuda",
                           "--out", str(results / "fp16_ops_cuda.md")], 240),
        ("ort-fused", py + [str(bench / "export_fullsize.py"), *size, "--work", str(work), "--layout", "ort-fused",
                            "--precisions", "fp16", "--out", str(results / "export_fullsize_ort_fused_cuda.md")], 150),
        ("ort-fused-bench", py + [str(bench / "runtime_fullsize.py"), *size, "--work", str(work), "--graphs",
                                  "fp16,fp16-ort-fused", "--batch", "1,8", "--warmup", "5", "--iters", "50", "--provider",
                                  args.provider, "--out", str(results / "runtime_fullsize_ort_fused_cuda.md")], 180),
        ("ort-fused-profile", py + [str(bench / "gpu_profile.py"), str(work / "fp16-ort-fused" / "model.onnx"), "--batch",
                                    "8", "--out", str(results / "gpu_profile_ort_fused_cuda.md")], 120),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sam", default="vit_b")
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--provider", default="cuda", help="ONNX Runtime provider for the runtime rows")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run")
    parser.add_argument("--steps", help="comma-separated subset of the steps, in the order given")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ssprompt-gpu"), help="pack and exports shared by the steps")
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"), help="relative to the repository root")
    args = parser.parse_args()

    import torch


    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA device (torch.cuda.is_available() is False)")
    os.chdir(HERE.parent)
    args.work.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    plan = steps(args.work, args.results, args)
    if args.steps:
        chosen = args.steps.split(",")
        unknown = set(chosen) - {name for name, _, _ in plan}
        if unknown:
            raise SystemExit(f"--steps: unknown {', '.join(sorted(unknown))}")
        plan = sorted((s for s in plan if s[0] in chosen), key=lambda s: chosen.index(s[0]))
    report = []
    for name, command, limit in plan:
        left = args.budget - (time.perf_counter() - began)
        if left < 30:
            report.append([name, "skipped", "", "the budget was spent"])
            continue
        print(f"== {name} (at most {min(limit, left):.0f} s): {' '.join(command[1:])}", flush=True)
        start = time.perf_counter()
        try:
            done = subprocess.run(command, timeout=min(limit, left))
            status = "done" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            status = f"stopped at its limit ({min(limit, left):.0f} s)"
        report.append([name, status, f"{time.perf_counter() - start:.0f}",
                       f"{Path(command[0]).name} {command_line([Path(command[1]).name, *command[2:]])}"])
        print(f"== {name}: {status} in {time.perf_counter() - start:.0f} s", flush=True)

    lines = header("The prepared GPU run") + ["", f"Budget {args.budget:.0f} s; took {time.perf_counter() - began:.0f} s.", "",
                                               *table_lines(["step", "status", "seconds", "command"], report)]
    write_report(args.results / "gpu_run_cuda.md", lines)


if __name__ == "__main__":
    main()
